"""Process pools for CPU-bound side work (training, compiling), kept off the event loop.

Workers are spawned, not forked: a fork of a process running an event loop and threads
copies their locks mid-use. Each worker dies with its server, and may run at a lower CPU
priority so the predictions on the event loop always come first.
"""

from __future__ import annotations

import ctypes
import multiprocessing
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
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(os.getpid(), nice, initializer, initargs),
    )


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


def _init_worker(parent: int, nice: int, initializer, initargs) -> None:
    die_with_parent(parent)
    if nice:
        os.nice(nice)
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
