"""``nember serve --workers N``: N server processes on one port, so every core serves.

Each worker is a whole server (event loop, model cache, training pool) listening on the same
address with SO_REUSEPORT, and the kernel spreads new connections over them. What workers
must agree on lives in the configured stores, which they share: keys, billing, models, the
connection registry (per-account limits, listing, closing) and training jobs. A store whose
provider says it is not shared across processes (the in-memory registry) is refused here.

The supervisor starts the workers, passes SIGTERM and SIGINT on (each worker drains its
connections with 1001, as a lone server does), and restarts a worker that dies once it has
served; a worker that dies before it listens stops them all, since its siblings would fail
the same way.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import time
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path

import structlog

from nember_core.config import ROLES
from nember_core.errors import ConfigError, NemberError
from nember_core.metrics import METRICS_DIR_ENV
from nember_core.worker_pool import alive

from .nember import Nember

log = structlog.get_logger("nember.supervisor")

RESTART_DELAY = 1.0  # seconds before a worker that died is replaced
DRAIN_GRACE = 10.0  # seconds a worker may take past server.shutdown_timeout to exit


def check_shareable(nember: Nember, workers: int, port: int) -> None:
    where = nember.config.path or "<defaults>"
    if port == 0:
        raise ConfigError(f"{where}: server.port: {workers} workers need a fixed port, not 0")
    for role in ROLES:
        provider = nember.provider(role)
        if not provider.shared_across_processes:
            shared = sorted(name for name, p in nember.providers[role].items()
                            if p.shared_across_processes)
            raise ConfigError(
                f"{where}: {role}.plugin: {provider.name!r} keeps each process's state to "
                f"itself; {workers} workers need a shared one ({', '.join(shared) or 'none'})"
            )


def supervise(nember: Nember, host: str, port: int, workers: int) -> None:
    """Run ``workers`` server processes until SIGTERM/SIGINT, then wait for their drain."""
    check_shareable(nember, workers, port)
    config = nember.config
    context = multiprocessing.get_context("spawn")
    base = config.server.node or os.uname().nodename
    # Each worker, and the end of a pipe it writes to once it listens.
    running: dict[int, tuple[SpawnProcess, Connection]] = {}
    stopping = False

    def start(index: int) -> None:
        listening, tell = context.Pipe(duplex=False)
        process = context.Process(
            target=_run_worker,
            args=(str(config.path) if config.path else None, host, port, f"{base}/{index}",
                  os.getpid(), tell),
            name=f"nember-worker-{index}",
        )
        process.start()
        tell.close()  # the worker's end now
        running[index] = (process, listening)
        log.info("supervisor.worker_started", worker=index, pid=process.pid)

    def stop(signum=None, _frame=None) -> None:
        nonlocal stopping
        stopping = True
        for process, _ in running.values():
            # pid is None only before start(): every process in ``running`` has started.
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    figures = _metrics_dir(config.data_dir)
    os.environ[METRICS_DIR_ENV] = str(figures)  # the workers inherit it: /metrics adds up
    for index in range(workers):
        start(index)
    log.info("supervisor.started", workers=workers, host=host, port=port)
    failure = None
    deadline = None  # once stopping: when stragglers are killed
    killed = False
    while running:
        if stopping and deadline is None:
            deadline = time.monotonic() + config.server.shutdown_timeout + DRAIN_GRACE
        timeout = None if deadline is None or killed else max(0.0, deadline - time.monotonic())
        by_sentinel = {process.sentinel: index for index, (process, _) in running.items()}
        ready = multiprocessing.connection.wait(list(by_sentinel), timeout)
        if not ready:  # past the deadline: a worker is stuck in its shutdown
            for index, (process, _) in running.items():
                log.error("supervisor.worker_killed", worker=index, pid=process.pid)
                process.kill()
            killed = True
            continue
        for sentinel in ready:
            # typeshed's wait() returns any of the kinds it accepts; it returns some of the
            # objects it was given, here sentinels (ints).
            index = by_sentinel[sentinel]  # type: ignore[index]
            process, listening = running.pop(index)
            process.join()
            served = _listened(listening)
            listening.close()
            if stopping:
                continue
            log.error("supervisor.worker_exited", worker=index, code=process.exitcode)
            if served:
                time.sleep(RESTART_DELAY)  # a worker that keeps dying must not spin
                if not stopping:
                    start(index)
            else:
                failure = f"worker {index} exited while starting (code {process.exitcode})"
                stop()
    shutil.rmtree(figures, ignore_errors=True)
    log.info("supervisor.stopped")
    if failure:
        raise NemberError(f"{failure}; its error is in the log above")


def _metrics_dir(data_dir: Path) -> Path:
    """A fresh folder for this run's workers' figures; older runs' folders are removed."""
    run = data_dir / "run"
    for old in run.glob("metrics-*"):
        pid = old.name.removeprefix("metrics-")
        if not (pid.isdigit() and alive(int(pid))):  # a supervisor killed outright left it
            shutil.rmtree(old, ignore_errors=True)
    figures = run / f"metrics-{os.getpid()}"
    figures.mkdir(mode=0o700, parents=True)
    return figures


def _listened(listening: Connection) -> bool:
    """Did the worker say it listens? (A dead worker's pipe reads as end-of-file.)"""
    try:
        return listening.poll() and listening.recv_bytes() == b"listening"
    except EOFError:
        return False


def _run_worker(config_file: str | None, host: str, port: int, node: str, parent: int,
                tell: Connection) -> None:
    """One worker: a whole server, named ``node`` in the connection registry."""
    import attrs

    from nember_core.worker_pool import die_with_parent

    from .logs import configure
    from .server import serve

    os.setpgrp()  # a terminal's Ctrl-C reaches the supervisor only, which passes it on once
    die_with_parent(parent)
    nember = Nember.load(config_file)
    configure(nember.config.log.level, nember.config.log.format)
    server = attrs.evolve(nember.config.server, node=node)
    nember = attrs.evolve(nember, config=attrs.evolve(nember.config, server=server))
    code = 1
    try:
        serve(nember, host, port, ready=lambda _url: tell.send_bytes(b"listening"),
              reuse_port=True)
        code = 0
    except NemberError as exc:
        log.error("worker.failed", node=node, error=str(exc))
    finally:
        # Served and drained: exit now, even if a library left a thread running (a
        # half-opened SQLite connection when stopped while starting), which would hold
        # the process, and its database locks, forever.
        os._exit(code)
