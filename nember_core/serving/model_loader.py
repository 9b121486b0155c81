"""Turning a stored model version into fast paths: the CPU-bound part of a load.

Everything here runs in a worker thread (``asyncio.to_thread``), never on the event loop:
deserializing, building the family's predictor (~0.5 s for a large forest) and measuring it
would stall every connection of the process. A thread, not a process, because what it builds
(ctypes handles, closures over the library's objects) can't cross processes. Nothing here
touches the event loop: the cache creates the ``MicroBatcher`` when it installs the result.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import numpy as np

from nember_core.plugin_api import (
    ModelFamily,
    ModelFileRejected,
    ModelMeta,
    Predictor,
    RowPredictor,
    RowsPredictor,
    SumsDecider,
    TreeEnsemble,
)
from nember_core.records import artifact_digest

from .batching import Costs


@attrs.frozen
class Loaded:
    """A model version ready to install: its fast paths and what they cost."""

    meta: ModelMeta
    model: Any = attrs.field(repr=False)  # the library's object: rebuilt on compiled trees
    predictor: RowPredictor
    batch_rows: RowsPredictor
    ensemble: TreeEnsemble | None
    costs: Costs
    batched: bool  # do its measured costs say concurrent requests should share batches?
    proba: RowPredictor | None = None  # class probabilities of one row (PROTOCOL §7)
    decide: SumsDecider | None = None  # ``one`` from the ensemble's sums (``Predictor``)


def load_model(family: ModelFamily, meta: ModelMeta, data: bytes,
               batch_above_us: float | None) -> Loaded:
    """Check ``data`` against its digest, deserialize it, build the predictor, measure it."""
    if meta.artifact_sha256 is not None and artifact_digest(data) != meta.artifact_sha256:
        # Never hand a damaged file to the library: some crash the process on one.
        raise ModelFileRejected(f"the file of {meta.id} is damaged (its digest differs)")
    return build(family, meta, family.loads(data, meta.key.model_type), batch_above_us)


def build(family: ModelFamily, meta: ModelMeta, model: Any, batch_above_us: float | None,
          native: RowPredictor | None = None) -> Loaded:
    """The model's fast paths, on ``native`` compiled trees when given, measured.

    Each call builds a new predictor, so a compiled library can be measured here while the
    previous predictor of the same model keeps serving (compiled trees are not thread-safe).
    """
    model_type = meta.key.model_type
    built = family.predictor(model, model_type)
    if not isinstance(built, Predictor):  # a bare single-row function is enough
        built = Predictor(one=built)
    batch = built.many or (lambda rows: family.predict(model, model_type, rows))
    if native is not None and built.ensemble is not None:
        built.ensemble.use_native(native)
    costs, batched = _measure(meta, built.one, batch, batch_above_us)
    proba = built.proba if model_type == "class" else None
    return Loaded(meta, model, built.one, batch, built.ensemble, costs, batched, proba,
                  built.decide)


def remeasured(loaded: Loaded, batch_above_us: float | None) -> Loaded:
    """The same paths measured again: after switching its (not yet serving) trees to native
    code."""
    costs, batched = _measure(loaded.meta, loaded.predictor, loaded.batch_rows, batch_above_us)
    return attrs.evolve(loaded, costs=costs, batched=batched)


def _measure(meta: ModelMeta, predictor: RowPredictor, batch: RowsPredictor,
             batch_above_us: float | None) -> tuple[Costs, bool]:
    """What the paths cost, and whether batches pay: the model costs more than
    ``batch_above_us`` a row (``None``: never batch) and a batch of 32 beats 32 single rows."""
    costs = measure_costs(predictor, batch, len(meta.features) * meta.window)
    batched = (batch_above_us is not None and costs.single > batch_above_us
               and costs.batch_wins(32))
    return costs, batched


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
