"""Process pools for CPU-bound side work (training, compiling), kept off the event loop.

Workers are spawned, not forked: a fork of a process running an event loop and threads
copies their locks mid-use. Each worker dies with its server, and may run at a lower CPU
priority so the predictions on the event loop always come first.
"""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import multiprocessing.context
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def spawn_pool(workers: int, initializer: Callable[..., None] | None = None,
               initargs: tuple[Any, ...] = (), nice: int = 0) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes; ``initializer(*initargs)`` runs in each one first."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=_SpawnContext(nice) if nice else multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(os.getpid(), initializer, initargs),
    )


class _SpawnContext(multiprocessing.context.SpawnContext):
    """Spawns processes that run at ``nice`` from their first instruction on: a spawned
    worker first imports the parent's main module (the whole CLI), which a niceness set by
    the worker itself would leave at full priority, beside the event loop."""

    def __init__(self, nice: int):
        super().__init__()
        self.Process = functools.partial(_NiceProcess, nice)  # type: ignore[assignment,misc]


class _NiceProcess(multiprocessing.context.SpawnProcess):
    def __init__(self, nice: int, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._nice = nice

    def start(self) -> None:
        super().start()
        try:  # the parent renices it: the child is still importing
            os.setpriority(os.PRIO_PROCESS, self.pid, self._nice)  # type: ignore[arg-type]
        except OSError:  # gone already, or not allowed: it runs, only not nicer
            pass


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Stop now: queued work is dropped and running work killed. ``shutdown(wait=False)``
    alone leaves a worker finishing its task, and the interpreter's exit waits for it: a
    SIGTERM would wait minutes for a big training job."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14
    if terminate is not None:
        terminate()
        return
    # Before: shutdown() forgets its processes.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()


def _init_worker(parent: int, initializer, initargs) -> None:
    die_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)


def die_with_parent(parent: int) -> None:
    """A server killed outright (SIGKILL) must not leave its workers behind."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def alive(pid: int) -> bool:
    """Is there a process with this id (ours or not)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        pass
    return True
