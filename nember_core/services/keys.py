"""API keys: create (the secret shown once), list with their live connections, revoke."""

from __future__ import annotations

import attrs

from nember_core import credentials, rules
from nember_core.errors import Forbidden, NotFound
from nember_core.records import ApiKey, NewApiKey
from nember_core.serving.protocol import KEY_REVOKED
from nember_core.stores import Stores


@attrs.frozen
class KeyListing:
    key: ApiKey
    live_connections: int


@attrs.frozen
class Revoked:
    key: ApiKey
    already: bool  # it was revoked before (at ``key.revoked_at``): nothing changed


class Keys:
    def __init__(self, stores: Stores):
        self._stores = stores

    async def create(self, account_id: str, name: str, scope: str = "predict",
                     granted: str = "manage") -> NewApiKey:
        """A new key of ``scope``; never more than the caller's own (``granted``): a leaked
        key can't mint a stronger one."""
        name, scope = rules.name(name, "a key name"), rules.scope(scope)
        if not rules.scope_allows(granted, scope):
            raise Forbidden(f"a key of scope {granted!r} can't create a key of scope {scope!r}")
        return await self._stores.key_store.create_key(account_id, name, scope)

    async def list(self, account_id: str) -> list[KeyListing]:
        live: dict[str, int] = {}
        for conn in await self._stores.registry.list(account_id):
            live[conn.key_id] = live.get(conn.key_id, 0) + 1
        keys = await self._stores.key_store.list_keys(account_id)
        return [KeyListing(key, live.get(key.id, 0)) for key in keys]

    async def authenticate(self, secret: str) -> ApiKey | None:
        if not secret or len(secret) > credentials.MAX_KEY_LENGTH:
            return None  # refused without a lookup
        return await self._stores.key_store.authenticate(secret)

    async def find(self, id_or_secret: str) -> ApiKey | None:
        """A key by its id or the key itself, active or revoked."""
        return await self._stores.key_store.find_key(id_or_secret.strip())

    async def revoke(self, id_or_secret: str, account_id: str | None = None) -> ApiKey:
        """Revoke a key and close its live connections (4401) wherever they are.

        With ``account_id`` (the REST API), only that account's key, named by its id;
        without (an operator's CLI), any key, by its id or the key itself.
        """
        return (await self.revoke_reporting(id_or_secret, account_id)).key

    async def revoke_reporting(self, id_or_secret: str,
                               account_id: str | None = None) -> Revoked:
        """:meth:`revoke`, saying whether the key was revoked already (then it stays
        revoked since that first time)."""
        wanted = id_or_secret.strip()
        key = await self._stores.key_store.find_key(wanted)
        if account_id is not None and (key is None or key.id != wanted
                                       or key.account_id != account_id):
            raise NotFound(f"no API key {wanted}")
        if key is None:
            raise NotFound("no such API key (give its id, as `nember keys list` shows, or the key)")
        already = key.revoked_at is not None
        key = await self._stores.key_store.revoke_key(key.id)
        # Other servers also notice within their revocation check interval.
        registry = self._stores.registry
        for conn in await registry.list(key.account_id):
            if conn.key_id == key.id:
                await registry.close_connection(conn.id, KEY_REVOKED, "API key revoked")
        return Revoked(key, already)
