"""``/api/connections``: the account's live websockets, and closing one (code 4000)."""

from __future__ import annotations

from datetime import datetime, timezone

from aiohttp import web

from nember_core.records import LiveConnection

from .auth import caller
from .context import iso, items, services


def describe(conn: LiveConnection) -> dict:
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
    return items([describe(conn) for conn in await services(request).connections.list(
        me.account_id)])


async def close_connection(request: web.Request) -> web.Response:
    me = await caller(request)
    conn_id = request.match_info["id"]
    await services(request).connections.close(me.account_id, conn_id)
    return web.json_response({"id": conn_id, "closed": True})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/connections", list_connections)
    router.add_delete("/api/connections/{id}", close_connection)
