"""The REST API under ``/api/``: JSON over HTTP, for bots, scripts and the dashboard.

Authenticated by ``Authorization: Bearer <API key>``, scoped to that key's account. Every
route is described in :mod:`nember_core.rest.openapi`, served at ``/api/openapi.json``.
"""

from __future__ import annotations

from aiohttp import web

from . import connections, keys, models, openapi, usage
from .context import API, ApiContext
from .errors import error_middleware

__all__ = ["API", "ApiContext", "add_routes", "error_middleware"]


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/openapi.json", openapi.handler)
    for module in (keys, models, connections, usage):
        module.add_routes(app.router)
