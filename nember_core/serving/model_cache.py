"""Trained models in memory, shared by every connection of this server.

Lookups are a dict access. Loading (store read, deserialize) happens on a miss, off the
per-frame path; a background task looks for newer versions whenever the model store's
generation token changes, so a retrained model is picked up without any I/O per request.
Tree models are compiled to native code in the background (``tree_compiler``) and switch to
it when it is ready.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import structlog

from nember_core.plugin_api import ModelFamily, ModelStore, Predictor, RowPredictor
from nember_core.records import ModelKey, ModelMeta
from nember_core.trees.compiler import TreeCompiler

from .batching import Costs, MicroBatcher
from .features import FeatureExtractor

log = structlog.get_logger("nember.models")

MISSING = object()  # never looked up, as opposed to None: looked up, no such model
MAX_ABSENT = 10_000  # cap on remembered misses, so bad requests can't grow memory forever


class LoadedModel:
    __slots__ = ("meta", "version", "extractor", "batcher", "predictor", "batch_rows",
                 "ensemble", "_labels")

    def __init__(self, meta: ModelMeta, predict_row: RowPredictor,
                 batcher: MicroBatcher | None = None, batch_rows=None, ensemble=None):
        self.meta = meta
        self.version = meta.version
        self.extractor = FeatureExtractor(meta.features, meta.window)
        self.batcher = batcher  # set when the model is costly enough to gain from batches
        self.predictor = predict_row  # the family's single-row predictor
        self.batch_rows = batch_rows  # ...and its many-rows one
        self.ensemble = ensemble  # the trees it evaluates, if it is a tree model
        self._labels = meta.classes

    @property
    def native(self) -> bool:
        """Are its trees answered by compiled code?"""
        return self.ensemble is not None and self.ensemble.native

    def predict(self, points: list[Any]) -> Any:
        """The answer's ``prediction``: a class label as in the training data, or a float."""
        return self.label(self.predictor(self.extractor.row(points)))

    def label(self, raw: Any) -> Any:
        if self._labels is not None:
            return self._labels[int(raw)]
        return float(raw)


def _cost_us(predict, rows: np.ndarray) -> float:
    """The median time of one call, in µs."""
    for _ in range(3):
        predict(rows)
    samples = []
    for _ in range(15):
        started = time.perf_counter_ns()
        predict(rows)
        samples.append(time.perf_counter_ns() - started)
    return sorted(samples)[len(samples) // 2] / 1000


def measure_costs(predict_row, predict_rows, width: int) -> Costs:
    """What one row costs, and what batches of 2 and 32 cost, as a line: fixed + per row."""
    two, many = _cost_us(predict_rows, np.zeros((2, width))), _cost_us(
        predict_rows, np.zeros((32, width))
    )
    per_row = max(0.0, (many - two) / 30)
    return Costs(single=_cost_us(predict_row, np.zeros((1, width))),
                 fixed=max(0.0, two - 2 * per_row), per_row=per_row)


class ModelCache:
    def __init__(self, store: ModelStore, families: dict[str, ModelFamily],
                 batch_above_us: float | None = 20.0, max_batch: int = 256,
                 compiler: TreeCompiler | None = None):
        self._store = store
        self._families = families
        self._batch_above_us = batch_above_us  # None: never batch
        self._max_batch = max_batch
        self._compiler = compiler  # None: trees are never compiled
        self._entries: dict[ModelKey, LoadedModel | None] = {}
        self._loading: dict[ModelKey, asyncio.Future] = {}
        self._background: set[asyncio.Task] = set()  # prefetches and compiles
        self._generation: str | None = None

    def get(self, key: ModelKey):
        """The loaded model, ``None`` when there is none, or ``MISSING`` before a load."""
        return self._entries.get(key, MISSING)

    async def load(self, key: ModelKey) -> None:
        """Look the key up in the store (once, however many connections ask at once)."""
        pending = self._loading.get(key)
        if pending is not None:
            await asyncio.shield(pending)
            return
        future = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            self._remember(key, await self._fetch(key))
        finally:
            del self._loading[key]
            future.set_result(None)

    def _remember(self, key: ModelKey, entry: LoadedModel | None) -> None:
        if entry is None and len(self._entries) >= MAX_ABSENT:
            for stale in [k for k, v in self._entries.items() if v is None]:
                del self._entries[stale]
        self._entries[key] = entry

    async def _fetch(self, key: ModelKey) -> LoadedModel | None:
        family = self._families.get(key.family)
        if family is None:
            return None
        try:
            meta = await self._store.latest(key)
            if meta is None:
                return None
            return await self._load_version(family, meta)
        except Exception as exc:  # a broken file must not take the server down
            log.error(
                "model.load_failed",
                strat=key.strat,
                family=key.family,
                model_type=key.model_type,
                error=str(exc),
            )
            return None

    async def _load_version(self, family: ModelFamily, meta: ModelMeta) -> LoadedModel:
        data = await self._store.read(meta)
        model_type = meta.key.model_type
        model = await asyncio.to_thread(family.loads, data, model_type)
        built = family.predictor(model, model_type)
        if not isinstance(built, Predictor):  # a bare single-row function is enough
            built = Predictor(one=built)
        predictor = built.one
        batch = built.many or (lambda rows: family.predict(model, model_type, rows))
        ensemble = built.ensemble
        width = len(meta.features) * meta.window
        compile_later = False
        if ensemble is not None and self._compiler is not None:
            native = await self._compiler.cached(ensemble, width)
            if native is not None:
                ensemble.use_native(native)
            else:
                compile_later = True
        entry = self._entry(meta, predictor, batch, ensemble)
        if compile_later:
            task = asyncio.create_task(self._compile(meta.key, entry, ensemble, width))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return entry

    def _entry(self, meta: ModelMeta, predictor: RowPredictor, batch,
               ensemble=None) -> LoadedModel:
        """The model ready to serve, batched if its measured costs say batches pay."""
        costs = measure_costs(predictor, batch, len(meta.features) * meta.window)
        batcher = None
        if (
            self._batch_above_us is not None
            and costs.single > self._batch_above_us
            and costs.batch_wins(32)
        ):
            batcher = MicroBatcher(predictor, batch, self._max_batch, costs)
        log.info(
            "model.loaded",
            strat=meta.key.strat,
            family=meta.key.family,
            model_type=meta.key.model_type,
            version=meta.version,
            predict_us=round(costs.single, 1),
            batched=batcher is not None,
            native=ensemble is not None and ensemble.native,
        )
        return LoadedModel(meta, predictor, batcher, batch, ensemble)

    def prefetch(self, key: ModelKey) -> None:
        """Load a model nobody asked for yet (one just trained): its trees start compiling
        now, not at the first request. Versions already cached are reloaded by ``refresh``."""
        if key not in self._entries and key not in self._loading:
            task = asyncio.create_task(self.load(key))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _compile(self, key: ModelKey, entry: LoadedModel, ensemble, width: int) -> None:
        try:
            native = await self._compiler.compile(ensemble, width)
        except Exception as exc:  # never worse than not compiling
            log.error("model.compile_failed", family=key.family, error=repr(exc))
            return
        if native is None:
            return
        ensemble.use_native(native)
        if self._entries.get(key) is entry:  # still the version being served: re-measure
            self._entries[key] = self._entry(entry.meta, entry.predictor, entry.batch_rows,
                                             ensemble)

    async def wait_compiled(self) -> None:
        """Until every prefetch and compile started so far has finished (benchmarks)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def refresh(self) -> None:
        """Reload every cached key whose newest version changed since the last look."""
        generation = await self._store.generation()
        if generation == self._generation:
            return
        self._generation = generation
        for key, entry in list(self._entries.items()):
            try:
                meta = await self._store.latest(key)
            except Exception as exc:
                log.error("model.refresh_failed", family=key.family, error=str(exc))
                continue
            current = None if entry is None else entry.version
            newest = None if meta is None else meta.version
            if newest != current:
                self._remember(key, await self._fetch(key))

    async def refresh_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception as exc:
                log.error("model.refresh_failed", error=str(exc))
