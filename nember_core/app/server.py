"""The aiohttp application: routes, start-up and shutdown, TLS, and running it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import structlog
from aiohttp import web

from nember_core import metrics
from nember_core.errors import ConfigError, NemberError
from nember_core.records import ModelMeta
from nember_core.services import Services
from nember_core.serving.gateway import Gateway
from nember_core.serving.model_cache import ModelCache
from nember_core.training.jobs import TrainingJobs
from nember_core.trees.compiler import TreeCompiler
from nember_core.web import CONTEXT, WebContext, add_routes, error_middleware
from nember_core.web.forwarded import forwarded_middleware
from nember_core.web.models import UPLOADS, sweep_uploads

from .nember import Nember

log = structlog.get_logger("nember.server")

GATEWAY = web.AppKey("gateway", Gateway)
WS_PATH = "/ws"
SWEEP_SECONDS = 60.0  # how often usage rows left open by a killed process are looked for


def create_app(nember: Nember) -> web.Application:
    middlewares = [error_middleware]
    if nember.config.server.trusted_proxies:
        middlewares.insert(0, forwarded_middleware(nember.config.server.trusted_proxies))
    app = web.Application(middlewares=middlewares)
    state: dict[str, Gateway] = {}

    async def lifecycle(app: web.Application):
        # Whatever opened before a failure is closed again: an SQLite connection left open
        # keeps its thread, and the process, alive after the error.
        async with contextlib.AsyncExitStack() as opened:
            stores = await nember.open()
            opened.push_async_callback(stores.close)
            server = nember.config.server
            compiler = None
            if server.compile_trees:
                compiler = TreeCompiler(nember.config.data_dir / "compiled")
                opened.push_async_callback(compiler.close)
            cache = ModelCache(
                stores.model_store,
                nember.families,
                batch_above_us=server.batch_above_us if server.micro_batching else None,
                max_batch=server.max_batch,
                compiler=compiler,
            )
            swept = await asyncio.to_thread(sweep_uploads, nember.config.data_dir)
            if swept:
                log.info("uploads.swept", files=swept)
            stores.on_model_announced(cache.announced)

            async def saved(meta: ModelMeta) -> None:
                cache.announced(meta.key, meta.version)  # at once here, whatever the registry
                await stores.announce_model(meta.key, meta.version)

            gateway = Gateway(nember.config, stores, cache)
            opened.push_async_callback(gateway.drain)  # runs before the stores close
            jobs = TrainingJobs(stores.model_store, stores.jobs, server.training_workers,
                                on_saved=saved, timeout=server.training_timeout,
                                memory_mb=server.training_memory_mb, node=stores.node,
                                scratch=nember.config.data_dir / UPLOADS)
            opened.push_async_callback(jobs.close)
            jobs.start()  # claims queued jobs from the board while it has a free slot
            app[GATEWAY] = gateway
            app[CONTEXT] = WebContext(
                services=Services(nember.config, nember.families, stores, jobs),
                config=nember.config,
            )
            state["gateway"] = gateway
            # Before listening: a bot's first request must not wait for a family's imports
            # (XGBoost and scikit-learn: most of a second).
            await cache.warm_up()
            for task in (
                asyncio.create_task(cache.refresh_forever(server.model_refresh_interval)),
                asyncio.create_task(
                    gateway.watch_revocations(server.revocation_check_interval)
                ),
                asyncio.create_task(gateway.close_abandoned_forever(SWEEP_SECONDS)),
                asyncio.create_task(metrics.watch_loop_lag()),
                asyncio.create_task(_publish_metrics_forever()),
            ):
                opened.push_async_callback(_cancelled, task)
            yield

    async def on_shutdown(app: web.Application) -> None:
        gateway = state.get("gateway")
        if gateway is not None:
            await gateway.shutdown()

    async def websocket(request: web.Request) -> web.StreamResponse:
        return await request.app[GATEWAY].handle(request)

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    app.router.add_get(WS_PATH, websocket)
    add_routes(app, nember.config.dashboard, nember.config.server.metrics)
    app.on_response_prepare.append(_plain_server_header)
    return app


async def _plain_server_header(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp would say "Python/3.x aiohttp/3.x": nothing a visitor needs to know.
    response.headers["Server"] = "Nember"


async def _publish_metrics_forever() -> None:
    """Under ``--workers``, this worker's figures for its siblings' /metrics, every second."""
    directory = os.environ.get(metrics.METRICS_DIR_ENV)
    if not directory:
        return
    while True:
        try:
            await asyncio.to_thread(metrics.publish, Path(directory))
        except OSError as exc:
            log.warning("metrics.publish_failed", error=str(exc))
        await asyncio.sleep(1.0)


async def _cancelled(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def ssl_context(nember: Nember) -> ssl.SSLContext | None:
    tls = nember.config.server.tls
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        where = nember.config.path or "<defaults>"
        raise ConfigError(
            f"{where}: server.tls: cannot load the certificate and key: {exc}"
        ) from None
    return context


def _event_loop(nember: Nember) -> asyncio.AbstractEventLoop | None:
    """uvloop when asked for or (``auto``) installed: its transports and loop are C, a few µs
    less per prediction than asyncio's; ``None``: asyncio's own."""
    chosen = nember.config.server.event_loop
    if chosen == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if chosen == "auto":
            return None
        where = nember.config.path or "<defaults>"
        raise ConfigError(
            f"{where}: server.event_loop: uvloop is not installed (pip install 'nember[uvloop]')"
        ) from None
    return uvloop.new_event_loop()


# A young collection runs when the tracked objects alive grew by this many since the last:
# CPython's 700 is reached again and again by connections coming and going (each holds a few
# hundred objects while it lives), whose objects then die by reference counting anyway. In a
# storm of reconnects that was 370 young collections in 8 s, 24 µs of the server's CPU per
# accept; at 10,000, one. Frames allocate and free in step, so they rarely reach either.
YOUNG_COLLECTION_THRESHOLD = 10_000


async def _freeze_startup_objects(app: web.Application) -> None:
    """Leave what start-up made (modules, families, stores: most of the process's objects)
    out of every garbage collection from now on: a full collection then walks only what
    serving made, so it stalls the frames behind it far less."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])
    log.debug("gc.frozen", objects=gc.get_freeze_count())


def _bind_once(host: str, port: int, reuse_port: bool) -> None:
    """Bind every address ``host`` names, as the server will (asyncio's socket options),
    and let go at once: raises what the server's own bind would."""
    for family, kind, proto, _, address in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)


def _reason(exc: BaseException) -> object:
    return getattr(exc, "strerror", None) or exc


def _raise_open_files_limit() -> None:
    """Every connection is a file descriptor: allow as many as the system lets this process."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):  # not on this platform, or not allowed
        pass


def serve(
    nember: Nember,
    host: str | None = None,
    port: int | None = None,
    ready: Callable[[str], None] | None = None,
    reuse_port: bool = False,
) -> None:
    """Serve until SIGINT/SIGTERM, then drain connections (close code 1001) and return.

    ``reuse_port``: share the port with other processes (SO_REUSEPORT; ``--workers``).
    """
    server = nember.config.server
    host = host or server.host
    port = server.port if port is None else port
    context = ssl_context(nember)
    nember.prepare_data_dir()  # its errors are not "cannot listen"
    _raise_open_files_limit()
    scheme = "wss" if context else "ws"
    url = f"{scheme}://{host}:{port}{WS_PATH}"

    def announce(_message: str) -> None:
        log.info("server.listening", url=url, node=server.node or None)
        if ready is not None:
            ready(url)

    try:
        # Start-up (the stores, the families' imports) takes seconds: a taken port is said
        # before it, not after.
        _bind_once(host, port, reuse_port)
    except (OSError, OverflowError) as exc:
        raise NemberError(f"cannot listen on {host}:{port}: {_reason(exc)}") from None
    app = create_app(nember)
    app.on_startup.append(_freeze_startup_objects)  # after the stores and families are up
    try:
        web.run_app(
            app,
            loop=_event_loop(nember),
            host=host,
            port=port,
            ssl_context=context,
            shutdown_timeout=server.shutdown_timeout,
            reuse_port=reuse_port or None,
            print=announce,
            access_log=None,
        )
    except (OSError, OverflowError) as exc:  # taken meanwhile, or not allowed
        raise NemberError(f"cannot listen on {host}:{port}: {_reason(exc)}") from None
    log.info("server.stopped")
