"""Trained models in memory, shared by every connection of this server.

Lookups are a dict access. Loading (store read; deserializing, building and measuring the
predictor in a worker thread: ``model_loader``) happens on a miss, off the per-frame path; a
background task looks for newer versions whenever the model store's generation token
changes, so a retrained model is picked up without any I/O per request. A load that fails is
remembered as a failure, tried again after a backoff, not as "no such model". Tree models are
compiled to native code in the background (``trees.compiler``) and switch to it when it is
ready.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import numpy as np
import structlog

from nember_core.metrics import FIGURES
from nember_core.plugin_api import (
    ModelFamily,
    ModelStore,
    RowPredictor,
    SumsDecider,
    TreeEnsemble,
)
from nember_core.records import ModelKey, ModelMeta
from nember_core.trees.compiler import TreeCompiler

from . import model_loader
from .batching import MicroBatcher
from .features import FeatureExtractor
from .model_loader import Loaded

log = structlog.get_logger("nember.models")

MISSING = object()  # never looked up, as opposed to None: looked up, no model to serve
_RETRY = object()  # refresh: try a failed load again (its newest version is not the question)
# Remembered misses and failures, so bad requests can't grow memory forever: at most this
# many, and this many characters of keys (a strategy name can be 60 KB); the oldest go first.
MAX_ABSENT = 10_000
MAX_ABSENT_BYTES = 8 * 1024 * 1024
RETRY_BASE = 1.0  # seconds from a failed load to the next try; doubling per failure...
RETRY_CAP = 60.0  # ...up to this
REFRESH_LOADS = 4  # loads a refresh runs at once: each holds a thread and the GIL in turns
# Versions asked for by number (PROTOCOL §7) kept loaded besides the newest ones: at most this
# many, the least recently asked going first.
MAX_PINNED = 64
PINNED_MISS_SECONDS = 5.0  # a version found missing is looked up again after this
LOG_LIMIT = 200  # characters of a strategy name or an error in a log event


def _cut(text: str, limit: int = LOG_LIMIT) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


async def _once(pending: dict, wanted: Any, fetch: Callable[[], Awaitable[None]]) -> None:
    """Run ``fetch`` for ``wanted`` once, however many ask at once: the others wait for it
    (shielded: one caller cancelled doesn't cancel the others' load)."""
    running = pending.get(wanted)
    if running is not None:
        await asyncio.shield(running)
        return
    future = asyncio.get_running_loop().create_future()
    pending[wanted] = future
    try:
        await fetch()
    finally:
        del pending[wanted]
        future.set_result(None)


def _key_size(key: ModelKey) -> int:
    return len(key.account_id) + len(key.strat) + len(key.family) + len(key.model_type)


@attrs.frozen
class LoadFailure:
    """Why a key has no model to serve although the store may have one."""

    version: int | None  # the version that failed to load; None: the store's look-up failed
    delay: float  # seconds from this failure to the next try
    retry_at: float  # time.monotonic() of the next try

    def due(self) -> bool:
        return time.monotonic() >= self.retry_at


@attrs.frozen
class PinnedMiss:
    """Why a version asked for by number can't answer: ``no_model`` (no version at all),
    ``no_version`` (not that one; ``newest`` is), ``failed`` (its load failed)."""

    reason: str
    newest: int | None
    until: float  # time.monotonic() after which it is looked up again


class LoadedModel:
    __slots__ = ("meta", "version", "extractor", "batcher", "predictor", "batch_rows",
                 "ensemble", "kind", "_labels", "proba", "_label_names", "_bounds",
                 "trained_at", "_trained_epoch", "_decide", "_read")

    def __init__(self, meta: ModelMeta, predict_row: RowPredictor,
                 batcher: MicroBatcher | None = None, batch_rows=None, ensemble=None,
                 proba: RowPredictor | None = None, decide: SumsDecider | None = None):
        self.meta = meta
        self.version = meta.version
        self.extractor = FeatureExtractor(meta.features, meta.window)
        self.batcher = batcher  # set when the model is costly enough to gain from batches
        self.predictor = predict_row  # the family's single-row predictor
        self.batch_rows = batch_rows  # ...and its many-rows one
        self.ensemble = ensemble  # the trees it evaluates, if it is a tree model
        # Compiled trees and a family that decides from their sums: rows never become arrays.
        self._decide = decide if ensemble is not None and ensemble.native else None
        # ...and, where the compiled reader was built, the points read into them in C.
        self._read: Callable[[list[Any]], list[float] | None] = _no_reader
        if self._decide is not None and ensemble.points_reader is not None:
            self._read = ensemble.points_reader(meta.features, meta.window) or _no_reader
        self.kind = (meta.key.family, meta.key.model_type)  # what /metrics counts it under
        self._labels = meta.classes
        # What the opt-in answers (PROTOCOL §7) need, worked out once per version.
        self.proba = proba  # class probabilities of one row; None: the family gives none
        self._label_names = None if meta.classes is None else [str(c) for c in meta.classes]
        self._bounds = None
        if meta.feature_ranges is not None:  # (low, high) per value of a request's row
            self._bounds = tuple(meta.feature_ranges) * meta.window
        self.trained_at = meta.trained_at.isoformat().replace("+00:00", "Z")
        self._trained_epoch = meta.trained_at.timestamp()

    def probabilities(self, row: np.ndarray) -> tuple[Any, dict[str, float]]:
        """The most probable label, and each label's probability (labels as strings).

        Only for a class model with a ``proba`` (the session checks both first), whose meta
        has its ``classes``: neither ``proba`` nor ``_label_names`` is None here, which their
        types can't say (hence the two ignores, rather than checks on the per-frame path)."""
        found = self.proba(row)  # type: ignore[misc]
        values = found.tolist() if type(found) is np.ndarray else [float(p) for p in found]
        best = max(range(len(values)), key=values.__getitem__)  # the first, on a tie
        return self.label(best), dict(zip(self._label_names, values, strict=True))  # type: ignore[arg-type]

    def details(self, row: np.ndarray) -> tuple[dict[str, Any], bool | None]:
        """The answer's ``model`` object, and whether ``row`` lies inside the ranges the
        model saw in training (``None``: not known, a model trained before they were kept).
        """
        model = {"version": self.version, "trained_at": self.trained_at,
                 "age_seconds": round(time.time() - self._trained_epoch, 3)}
        if self._bounds is None:
            return model, None
        # A few values: plain floats beat NumPy's per-call overhead several times over.
        for value, (low, high) in zip(row[0].tolist(), self._bounds, strict=True):
            if value < low or value > high:
                return model, False
        return model, True

    @property
    def native(self) -> bool:
        """Are its trees answered by compiled code?"""
        return self.ensemble is not None and self.ensemble.native

    def predict(self, points: list[Any]) -> Any:
        """The answer's ``prediction``: a class label as in the training data, or a float."""
        if self._decide is not None:
            sums = self._read(points)
            if sums is None:  # not plainly right (or no compiled reader): checked in Python
                sums = self.ensemble.sums(self.extractor.values(points))
            return self.label(self._decide(sums))
        return self.label(self.predictor(self.extractor.row(points)))

    def label(self, raw: Any) -> Any:
        if self._labels is not None:
            return self._labels[int(raw)]
        return float(raw)


def _no_reader(points: list[Any]) -> None:
    """What ``LoadedModel`` reads points with when there is no compiled reader."""
    return None


class ModelCache:
    def __init__(self, store: ModelStore, families: dict[str, ModelFamily],
                 batch_above_us: float | None = 20.0, max_batch: int = 256,
                 compiler: TreeCompiler | None = None, retry_base: float = RETRY_BASE,
                 max_absent: int = MAX_ABSENT, max_absent_bytes: int = MAX_ABSENT_BYTES):
        self._store = store
        self._families = families
        self._batch_above_us = batch_above_us  # None: never batch
        self._max_batch = max_batch
        self._compiler = compiler  # None: trees are never compiled
        self._retry_base = retry_base
        self._max_absent, self._max_absent_bytes = max_absent, max_absent_bytes
        # None: no model to serve; why is in ``_failures`` (a failed load) or not (no model).
        self._entries: dict[ModelKey, LoadedModel | None] = {}
        self._failures: dict[ModelKey, LoadFailure] = {}
        self._absent: OrderedDict[ModelKey, int] = OrderedDict()  # None entries, oldest first
        self._absent_bytes = 0  # the sum of ``_absent``'s key sizes
        self._loading: dict[ModelKey, asyncio.Future] = {}
        self._pinned: OrderedDict[tuple[ModelKey, int], LoadedModel | PinnedMiss] = (
            OrderedDict())
        self._loading_pinned: dict[tuple[ModelKey, int], asyncio.Future] = {}
        self._background: set[asyncio.Task] = set()  # prefetches and compiles
        self._generation: str | None = None
        # Bumped whenever a model being served is replaced or dropped: a connection that
        # remembers the model it used last (``PredictionSession``) checks one int per frame.
        self.changes = 0

    async def warm_up(self) -> None:
        """Import every family's library now, in a thread, rather than at its first load."""
        started = time.perf_counter()
        for family in self._families.values():
            warm_up = getattr(family, "warm_up", None)
            if warm_up is None:
                continue
            try:
                await asyncio.to_thread(warm_up)
            except Exception as exc:  # its first load says what is wrong, again
                log.warning("family.warm_up_failed", family=family.name, error=_cut(repr(exc)))
        log.info("families.warmed", families=sorted(self._families),
                 seconds=round(time.perf_counter() - started, 2))

    def get(self, key: ModelKey):
        """The loaded model, ``None`` when there is none, or ``MISSING`` before a load."""
        return self._entries.get(key, MISSING)

    def failure(self, key: ModelKey) -> LoadFailure | None:
        """For a ``None`` entry: the failed load behind it, or ``None``: no such model."""
        return self._failures.get(key)

    async def load(self, key: ModelKey) -> None:
        """Look the key up in the store (once, however many connections ask at once)."""
        await _once(self._loading, key, lambda: self._fetch(key))

    def get_version(self, key: ModelKey, version: int):
        """Version ``version`` of ``key``: the loaded model, a ``PinnedMiss``, or ``MISSING``
        before a load (or when a miss is due to be looked up again)."""
        entry = self._entries.get(key)
        if entry is not None and entry.version == version:
            return entry
        found = self._pinned.get((key, version))
        if found is None or (type(found) is PinnedMiss and found.until <= time.monotonic()):
            return MISSING
        self._pinned.move_to_end((key, version))
        return found

    async def load_version(self, key: ModelKey, version: int) -> None:
        """Load one version by number (once, however many connections ask at once)."""

        async def fetch() -> None:
            self._pinned[(key, version)] = await self._fetch_version(key, version)
            self._pinned.move_to_end((key, version))
            while len(self._pinned) > MAX_PINNED:
                self._pinned.popitem(last=False)

        await _once(self._loading_pinned, (key, version), fetch)

    async def _fetch_version(self, key: ModelKey, version: int) -> LoadedModel | PinnedMiss:
        family = self._families.get(key.family)
        if family is None:
            return PinnedMiss("no_model", None, time.monotonic() + PINNED_MISS_SECONDS)
        try:
            # Every version of the account's models: rare (a version's first request on
            # this server), and no store needs a method more for it.
            versions = [meta for meta in await self._store.list(key.account_id)
                        if meta.key == key]
            meta = next((m for m in versions if m.version == version), None)
            if meta is None:
                newest = max((m.version for m in versions), default=None)
                reason = "no_model" if newest is None else "no_version"
                return PinnedMiss(reason, newest, time.monotonic() + PINNED_MISS_SECONDS)
            return await self._load_version(family, meta, compile_later=False)
        except Exception as exc:
            FIGURES.model_loads["failed"] += 1
            log.error("model.load_failed", strat=_cut(key.strat), family=_cut(key.family),
                      model_type=key.model_type, version=version, error=_cut(repr(exc)))
            return PinnedMiss("failed", None, time.monotonic() + self._retry_base)

    async def _prune_pinned(self) -> None:
        """Forget pinned versions deleted from the store since they were loaded."""
        for account_id in {key.account_id for key, _ in self._pinned}:
            stored = {(meta.key, meta.version) for meta in await self._store.list(account_id)}
            for pinned, found in list(self._pinned.items()):
                if (pinned[0].account_id == account_id and type(found) is not PinnedMiss
                        and pinned not in stored):
                    del self._pinned[pinned]

    async def _fetch(self, key: ModelKey) -> None:
        """Load the newest version of ``key`` and remember what came of it."""
        family = self._families.get(key.family)
        if family is None:
            self._remember_absent(key)
            return
        version = None
        try:
            meta = await self._store.latest(key)
            if meta is None:
                self._remember_absent(key)
                return
            version = meta.version
            entry = await self._load_version(family, meta)
        except Exception as exc:  # a store error, a broken file, a plugin bug: try again later
            FIGURES.model_loads["failed"] += 1
            self._remember_failure(key, version, exc)
            return
        self._absent_forget(key)
        self._failures.pop(key, None)
        self._set(key, entry)

    async def _load_version(self, family: ModelFamily, meta: ModelMeta,
                            compile_later: bool = True) -> LoadedModel:
        """Read and load one version: on compiled trees when the compiler has them already,
        else as it is, compiling it in the background (``compile_later``) to switch after."""
        data = await self._store.read(meta)
        loaded = await asyncio.to_thread(model_loader.load_model, family, meta, data,
                                         self._batch_above_us)
        ensemble = loaded.ensemble
        if ensemble is None or self._compiler is None:
            return self._install(loaded)
        width = len(meta.features) * meta.window
        native = await self._compiler.cached(ensemble, width)
        if native is None:
            entry = self._install(loaded)
            if not compile_later:
                return entry
            task = asyncio.create_task(
                self._compile(self._compiler, family, loaded, ensemble, entry, width))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return entry
        ensemble.use_native(native)  # nothing calls these trees yet: switch and measure again
        return self._install(await asyncio.to_thread(model_loader.remeasured, loaded,
                                                     self._batch_above_us))

    def _install(self, loaded: Loaded) -> LoadedModel:
        """The model ready to serve; its batcher is made here, on the event loop's thread."""
        batcher = None
        if loaded.batched:
            batcher = MicroBatcher(loaded.predictor, loaded.batch_rows, self._max_batch,
                                   loaded.costs)
        meta, ensemble = loaded.meta, loaded.ensemble
        FIGURES.model_loads["loaded"] += 1
        log.info(
            "model.loaded",
            strat=_cut(meta.key.strat),
            family=meta.key.family,
            model_type=meta.key.model_type,
            version=meta.version,
            predict_us=round(loaded.costs.single, 1),
            batched=batcher is not None,
            native=ensemble is not None and ensemble.native,
        )
        return LoadedModel(meta, loaded.predictor, batcher, loaded.batch_rows, ensemble,
                           loaded.proba, loaded.decide)

    def _set(self, key: ModelKey, entry: LoadedModel | None) -> None:
        if self._entries.get(key) is not None:  # a model in use goes: its users look again
            self.changes += 1
        self._entries[key] = entry

    def _remember_failure(self, key: ModelKey, version: int | None, exc: Exception) -> None:
        previous = self._failures.get(key)
        delay = self._retry_base
        # The same file failing again: wait longer each time. A store that didn't answer
        # (no version known) is retried at the base delay, so that a model first asked for
        # during an outage serves soon after the store is back.
        if previous is not None and version is not None and previous.version == version:
            delay = min(previous.delay * 2, RETRY_CAP)
        self._remember_absent(key, LoadFailure(version, delay, time.monotonic() + delay))
        log.error(
            "model.load_failed",
            strat=_cut(key.strat),
            family=_cut(key.family),
            model_type=key.model_type,
            version=version,
            retry_in=round(delay, 3),
            error=_cut(repr(exc)),
        )

    def _remember_absent(self, key: ModelKey, failure: LoadFailure | None = None) -> None:
        """No model to serve for ``key``: none in the store, or ``failure``."""
        self._set(key, None)
        if failure is None:
            self._failures.pop(key, None)
        else:
            self._failures[key] = failure
        self._absent_forget(key)
        size = _key_size(key)
        self._absent[key] = size
        self._absent_bytes += size
        while self._absent and (len(self._absent) > self._max_absent
                                or self._absent_bytes > self._max_absent_bytes):
            oldest, size = self._absent.popitem(last=False)
            self._absent_bytes -= size
            del self._entries[oldest]  # MISSING again: a request looks it up anew
            self._failures.pop(oldest, None)

    def _absent_forget(self, key: ModelKey) -> None:
        size = self._absent.pop(key, None)
        if size is not None:
            self._absent_bytes -= size

    def prefetch(self, key: ModelKey) -> None:
        """Load a model nobody asked for yet (one just trained): its trees start compiling
        now, not at the first request. Versions already cached are reloaded by ``refresh``."""
        if key not in self._entries and key not in self._loading:
            task = asyncio.create_task(self.load(key))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def announced(self, key: ModelKey, version: int | None) -> None:
        """A server (this one or another) stored or deleted a version of ``key``: serve the
        newest now rather than at the next ``refresh``. ``version`` is the newest one, or
        ``None`` to look it up. A model nobody asked for yet is prefetched."""
        if key not in self._entries and key not in self._loading:
            if version is not None:
                self.prefetch(key)
            return
        if version is not None and key in self._entries and self._version(key) == version:
            return  # this server's own announcement, or one heard twice
        task = asyncio.create_task(self._swap(key, version))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _swap(self, key: ModelKey, version: int | None) -> None:
        try:
            if version is None:
                version = (await self._store.latest_versions([key])).get(key)
            await self._reload(key, version, asyncio.Semaphore(1))
        except Exception as exc:  # the store away: the next refresh tries again
            log.error("model.swap_failed", family=_cut(key.family), error=_cut(repr(exc)))

    async def _compile(self, compiler: TreeCompiler, family: ModelFamily, loaded: Loaded,
                       ensemble: TreeEnsemble, entry: LoadedModel, width: int) -> None:
        """Compile ``loaded``'s trees (its ``ensemble``), then serve them in ``entry``'s
        place if it is still the one served."""
        key = loaded.meta.key
        try:
            native = await compiler.compile(ensemble, width)
            if native is None or self._entries.get(key) is not entry:
                return
            # A new predictor on the compiled trees, built and measured in a thread while
            # ``entry`` keeps serving: the compiled library is never called from two threads.
            rebuilt = await asyncio.to_thread(model_loader.build, family, loaded.meta,
                                              loaded.model, self._batch_above_us, native)
        except Exception as exc:  # never worse than not compiling
            FIGURES.model_compiles["failed"] += 1
            log.error("model.compile_failed", family=key.family, error=_cut(repr(exc)))
            return
        FIGURES.model_compiles["compiled"] += 1
        if self._entries.get(key) is entry:  # still the version being served: switch
            self._set(key, self._install(rebuilt))

    async def wait_compiled(self) -> None:
        """Until every prefetch and compile started so far has finished (benchmarks)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def refresh(self) -> None:
        """Reload every cached key whose newest version changed since the last look (one
        ``latest_versions`` call for all of them), and failed ones whose retry time came."""
        generation = await self._store.generation()
        changed: dict[ModelKey, Any] = {
            key: _RETRY for key, failure in self._failures.items() if failure.due()
        }
        if generation != self._generation:
            keys = [key for key in self._entries.keys() | self._loading.keys()
                    if self._looked_up_together(key)]
            newest = await self._store.latest_versions(keys) if keys else {}
            self._generation = generation
            if self._pinned:
                await self._prune_pinned()
            for key in keys:
                version = newest.get(key)
                if key in self._loading or self._version(key) != version:
                    changed[key] = version
        if changed:
            limit = asyncio.Semaphore(REFRESH_LOADS)
            await asyncio.gather(*(self._reload(key, version, limit)
                                   for key, version in changed.items()))

    def _looked_up_together(self, key: ModelKey) -> bool:
        """Is ``key`` in refresh's one look-up? Not when it can never have a model (no such
        family), nor when the store failed to look it up (a name the store can't hold, say):
        one such key must not fail the look-up of all the others. Failures retry on their own.
        """
        if key.family not in self._families:
            return False
        failure = self._failures.get(key)
        return failure is None or failure.version is not None

    def _version(self, key: ModelKey) -> int | None:
        """The version cached for ``key``: loaded, failed, or None (no model)."""
        entry = self._entries[key]
        if entry is not None:
            return entry.version
        failure = self._failures.get(key)
        return None if failure is None else failure.version

    async def _reload(self, key: ModelKey, newest: Any, limit: asyncio.Semaphore) -> None:
        """Load ``key`` again unless it already holds version ``newest`` (``_RETRY``: unless
        its failure was cleared meanwhile)."""
        async with limit:
            pending = self._loading.get(key)
            if pending is not None:  # a load under way may have read an older version
                await asyncio.shield(pending)
            if key not in self._entries:
                return  # forgotten meanwhile (an old miss or failure dropped)
            if newest is _RETRY:
                failure = self._failures.get(key)
                if failure is None or not failure.due():
                    return
            elif self._version(key) == newest:
                return
            if newest is None:  # deleted: nothing to read
                self._remember_absent(key)
            else:
                await self.load(key)

    async def refresh_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception as exc:
                log.error("model.refresh_failed", error=_cut(repr(exc)))
