"""The REST API under ``/api/``: JSON over HTTP, for bots, scripts and the dashboard.

Authenticated by ``Authorization: Bearer <API key>`` or the dashboard's session cookie (with
its CSRF token on changes), scoped to that account. Every
route is described in :mod:`nember_core.rest.openapi`, served at ``/api/openapi.json``.
"""

from __future__ import annotations

from aiohttp import web

from . import connections, families, keys, models, openapi, usage
from .context import API, ApiContext
from .errors import error_middleware

__all__ = ["API", "ApiContext", "add_routes", "error_middleware"]


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/openapi.json", openapi.handler)
    for module in (keys, models, families, connections, usage):
        module.add_routes(app.router)
