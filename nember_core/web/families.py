"""``/api/families``: the installed model families, third-party ones included."""

from __future__ import annotations

from aiohttp import web

from .auth import caller
from .context import items, services


async def list_families(request: web.Request) -> web.Response:
    await caller(request)
    families = services(request).models.families
    return items([
        {"name": name, "library_version": family.library_version,
         "trainable": getattr(family, "trainable", True)}
        for name, family in sorted(families.items())
    ])


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/families", list_families)
