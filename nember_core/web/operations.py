"""The operations endpoints (no authentication; a reverse proxy may restrict them):
``/healthz`` (the process serves), ``/readyz`` (every store answers) and ``/metrics``
(Prometheus text format, of every worker of this server)."""

from __future__ import annotations

import os
from pathlib import Path

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from nember_core.metrics import METRICS_DIR_ENV, FiguresCollector
from nember_core.services.health import failing_stores

from .context import CONTEXT

log = structlog.get_logger("nember.operations")
REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if CONTEXT not in request.app:  # still opening its stores
        return web.json_response({"status": "starting", "failing": []}, status=503)
    failing = await failing_stores(request.app[CONTEXT].services.stores)
    if failing:
        log.warning("readyz.failing", stores=failing)
        return web.json_response({"status": "unavailable", "failing": failing,
                                  "error": f"Not ready: {', '.join(failing)} not answering."},
                                 status=503)
    return web.json_response({"status": "ready", "failing": []})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application, with_metrics: bool) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if with_metrics:
        registry = CollectorRegistry(auto_describe=True)
        directory = os.environ.get(METRICS_DIR_ENV)
        registry.register(FiguresCollector(Path(directory) if directory else None))
        app[REGISTRY] = registry
        app.router.add_get("/metrics", metrics)
