"""Compiles loaded tree ensembles to native code in the background, and caches the results.

A compiled library is a local cache, never part of the model: it is built on this machine
from a model file the model store has already vetted, kept under ``data_dir/compiled`` named
by the digest of the trees (so a retrained version gets its own, and a restart reuses it),
and loaded with ctypes. Until it is ready, and whenever gcc or TL2cgen is missing or fails,
the model answers through its NumPy or library path: compiling only ever makes it faster.
"""

from __future__ import annotations

import asyncio
import shutil
from concurrent.futures import ProcessPoolExecutor
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import structlog

from nember_core.worker_pool import spawn_pool, stop_pool

from . import reader
from .ensemble import TreeEnsemble
from .native import NativeTrees, build_library

log = structlog.get_logger("nember.compiler")

FORMAT = "tl2cgen-1"  # bump when the generated library's contract changes


def unavailable_reason() -> str | None:
    """Why this machine can't compile trees, or ``None`` when it can."""
    if find_spec("tl2cgen") is None or find_spec("treelite") is None:
        return "treelite and tl2cgen are not installed"
    if shutil.which("gcc") is None:
        return "gcc is not on the PATH"
    return None


class TreeCompiler:
    def __init__(self, directory: Path):
        self._directory = directory
        # Started by the first compile: most servers restart into a cache.
        self._pool: ProcessPoolExecutor | None = None
        self._running: dict[Path, asyncio.Future] = {}
        self._failed: set[Path] = set()
        self._reader: asyncio.Future | None = None  # the compiled reader's type, or None
        self.unavailable = unavailable_reason()
        if self.unavailable:
            log.warning("compiler.unavailable", reason=self.unavailable)

    async def _library_path(self, ensemble: TreeEnsemble, width: int) -> Path:
        digest = await asyncio.to_thread(ensemble.digest, width)  # ~20 ms for 10 MB of trees
        return self._directory / f"{FORMAT}-{digest[:40]}.so"

    async def cached(self, ensemble: TreeEnsemble, width: int) -> NativeTrees | None:
        """The compiled trees if this machine compiled them before, else ``None``."""
        path = await self._library_path(ensemble, width)
        if not path.exists():
            return None
        return self._open(path, ensemble, width, await self._reader_type())

    async def compile(self, ensemble: TreeEnsemble, width: int) -> NativeTrees | None:
        """Compile (once, however many ask) and load; ``None`` if that isn't possible."""
        if self.unavailable:
            return None
        path = await self._library_path(ensemble, width)
        if not path.exists():
            if path in self._failed:
                return None
            running = self._running.get(path)
            if running is None:
                running = asyncio.ensure_future(self._build(ensemble, width, path))
                self._running[path] = running
                running.add_done_callback(lambda _: self._running.pop(path, None))
            if not await asyncio.shield(running):
                return None
        return self._open(path, ensemble, width, await self._reader_type())

    async def _reader_type(self) -> Any:
        """The compiled reader's ``Reader`` (built once, however many ask), or ``None``."""
        if self._reader is None:
            self._reader = asyncio.ensure_future(self._load_reader())
        return await asyncio.shield(self._reader)

    async def _load_reader(self) -> Any:
        reason = reader.unavailable_reason()
        if reason is not None:
            log.warning("compiler.reader_unavailable", reason=reason)
            return None
        path = self._directory / reader.file_name()
        try:
            if not path.exists():
                await reader.build(path)
                log.info("compiler.reader_built", library=path.name)
            return reader.load(path)
        except Exception as exc:  # slower frames, never a failed answer
            log.error("compiler.reader_failed", library=path.name, error=str(exc)[:800])
            return None

    async def _build(self, ensemble: TreeEnsemble, width: int, path: Path) -> bool:
        if self._pool is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # One worker at the lowest priority: compiling must not slow predictions.
            self._pool = spawn_pool(1, nice=19)
        nodes = sum(len(tree.left) for tree in ensemble.trees)
        log.info("compiler.started", trees=len(ensemble.trees), nodes=nodes, library=path.name)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await loop.run_in_executor(self._pool, build_library, ensemble.trees, width,
                                       ensemble.less_equal, str(path))
        except Exception as exc:  # a compiler failure costs speed, never an answer
            self._failed.add(path)
            log.error("compiler.failed", library=path.name, error=str(exc))
            return False
        log.info("compiler.finished", library=path.name,
                 seconds=round(loop.time() - started, 1))
        return True

    def _open(self, path: Path, ensemble: TreeEnsemble, width: int,
              reader_type: Any) -> NativeTrees | None:
        try:
            return NativeTrees(path, width, ensemble.trees[0].value.shape[1], ensemble.dtype,
                               reader_type)
        except Exception as exc:  # a truncated or foreign file: rebuild it next time
            log.error("compiler.load_failed", library=path.name, error=str(exc))
            path.unlink(missing_ok=True)
            return None

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        for running in list(self._running.values()):
            running.cancel()
        if self._pool is not None:
            stop_pool(self._pool)
