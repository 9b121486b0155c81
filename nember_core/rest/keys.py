"""``/api/keys``: list, create (the full key shown this once), revoke."""

from __future__ import annotations

from aiohttp import web

from .. import commands, protocol
from ..errors import NotFound
from ..records import ApiKey
from .auth import caller, read_json
from .context import API, iso, items
from .errors import ApiError


def describe(key: ApiKey, live: int) -> dict:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "created_at": iso(key.created_at),
        "revoked_at": iso(key.revoked_at),
        "live_connections": live,
    }


async def _live_by_key(request: web.Request, account_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for conn in await request.app[API].services.registry.list(account_id):
        counts[conn.key_id] = counts.get(conn.key_id, 0) + 1
    return counts


async def list_keys(request: web.Request) -> web.Response:
    me = await caller(request)
    live = await _live_by_key(request, me.account_id)
    keys = await request.app[API].services.key_store.list_keys(me.account_id)
    return items([describe(key, live.get(key.id, 0)) for key in keys])


async def create_key(request: web.Request) -> web.Response:
    me = await caller(request)
    body = await read_json(request)
    name = body.get("name", "default")
    if not isinstance(name, str) or not name.strip() or len(name) > commands.MAX_NAME:
        raise ApiError(422, f"'name' must be a string of 1 to {commands.MAX_NAME} characters.")
    new = await request.app[API].services.key_store.create_key(me.account_id, name.strip())
    return web.json_response({**describe(new.key, 0), "key": new.secret}, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    me = await caller(request)
    services = request.app[API].services
    key_id = request.match_info["id"]
    key = await services.key_store.find_key(key_id)
    if key is None or key.id != key_id or key.account_id != me.account_id:
        raise NotFound(f"no API key {key_id}")
    key = await services.key_store.revoke_key(key.id)
    # Close this node's connections now; other nodes notice within their check interval.
    for conn in await services.registry.list(me.account_id):
        if conn.key_id == key.id:
            await services.registry.close_connection(
                conn.id, protocol.KEY_REVOKED, "API key revoked"
            )
    return web.json_response(describe(key, 0))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/keys", list_keys)
    router.add_post("/api/keys", create_key)
    router.add_delete("/api/keys/{id}", revoke_key)
