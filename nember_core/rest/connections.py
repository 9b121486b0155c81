"""``/api/connections``: the account's live websockets, and closing one (code 4000)."""

from __future__ import annotations

from datetime import datetime, timezone

from aiohttp import web

from .. import protocol
from ..errors import NotFound
from .auth import caller
from .context import API, iso, items


def describe(conn) -> dict:
    last = conn.last_request_at
    return {
        "id": conn.id,
        "key_id": conn.key_id,
        "key_name": conn.key_name,
        "remote": conn.remote,
        "node": conn.node,
        "opened_at": iso(conn.opened_at),
        "predictions": conn.predictions,
        "errors": conn.errors,
        "last_request_at": iso(datetime.fromtimestamp(last, timezone.utc)) if last else None,
    }


async def list_connections(request: web.Request) -> web.Response:
    me = await caller(request)
    live = await request.app[API].services.registry.list(me.account_id)
    return items([describe(conn) for conn in sorted(live, key=lambda c: c.opened_at)])


async def close_connection(request: web.Request) -> web.Response:
    me = await caller(request)
    registry = request.app[API].services.registry
    conn_id = request.match_info["id"]
    mine = {conn.id for conn in await registry.list(me.account_id)}
    if conn_id not in mine or not await registry.close_connection(
        conn_id, protocol.CLOSED_BY_OWNER, "closed by owner"
    ):
        raise NotFound(f"no live connection {conn_id}")
    return web.json_response({"id": conn_id, "closed": True})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/connections", list_connections)
    router.add_delete("/api/connections/{id}", close_connection)
