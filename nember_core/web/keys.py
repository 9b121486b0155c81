"""``/api/keys``: list, create (the full key shown this once), revoke."""

from __future__ import annotations

from aiohttp import web

from nember_core.records import ApiKey

from .auth import caller, read_json
from .context import iso, items, services


def describe(key: ApiKey, live: int) -> dict:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "scope": key.scope,
        "created_at": iso(key.created_at),
        "revoked_at": iso(key.revoked_at),
        "live_connections": live,
    }


async def list_keys(request: web.Request) -> web.Response:
    me = await caller(request)
    listed = await services(request).keys.list(me.account_id)
    return items([describe(entry.key, entry.live_connections) for entry in listed])


async def create_key(request: web.Request) -> web.Response:
    me = await caller(request)
    body = await read_json(request)
    new = await services(request).keys.create(
        me.account_id, body.get("name", "default"), body.get("scope", "predict"), me.scope
    )
    return web.json_response({**describe(new.key, 0), "key": new.secret}, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    """200 either way (revoking is idempotent); ``already_revoked`` says whether this call
    revoked the key or it was revoked before (at its ``revoked_at``)."""
    me = await caller(request)
    done = await services(request).keys.revoke_reporting(request.match_info["id"],
                                                         me.account_id)
    return web.json_response({**describe(done.key, 0), "already_revoked": done.already})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/keys", list_keys)
    router.add_post("/api/keys", create_key)
    router.add_delete("/api/keys/{id}", revoke_key)
