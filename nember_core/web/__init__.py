"""The web face: the REST API under ``/api/`` and the dashboard at ``/``, over the service layer.

The API is authenticated by ``Authorization: Bearer <API key>`` or the dashboard's session
cookie (with its CSRF token on changes), scoped to that account; every route is described in
:mod:`nember_core.web.openapi`, served at ``/api/openapi.json``. The dashboard is a static page
over that same API, plus its login routes under ``/auth/``.
"""

from __future__ import annotations

from aiohttp import web

from nember_core.config import DashboardConfig

from . import connections, dashboard, families, keys, models, openapi, operations, usage
from .context import CONTEXT, WebContext
from .errors import error_middleware

__all__ = ["CONTEXT", "WebContext", "add_routes", "error_middleware"]


def add_routes(app: web.Application, settings: DashboardConfig, metrics: bool = True) -> None:
    """The REST API, the operations endpoints, and the dashboard when the config enables it.
    The handlers find the services at ``app[CONTEXT]``, set when the server has opened its
    stores."""
    operations.add_routes(app, metrics)
    app.router.add_get("/api/openapi.json", openapi.handler)
    for module in (keys, models, families, connections, usage):
        module.add_routes(app.router)
    if settings.enabled:
        dashboard.add_routes(app)
