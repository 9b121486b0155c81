"""Adaptive micro-batching: one model call for the requests of one event-loop turn.

When many connections ask the same costly model at once, the frames read in one turn of the
event loop are predicted together through the batch path, which costs far less per row.
While requests come alone (the last turn had one), the first of a turn is predicted at once,
as if there were no batching, so a lone connection waits for nothing; every other request
waits for the batch flushed at the end of its turn. Each flush picks the cheaper way for its
number of rows, from costs measured when the model loaded; models that can't gain are never
batched.
"""

from __future__ import annotations

import asyncio

import attrs
import numpy as np

from nember_core.plugin_api import RowPredictor, RowsPredictor


@attrs.frozen
class Costs:
    """Measured when the model loads: one row alone; a batch of n: ``fixed + per_row * n``."""

    single: float
    fixed: float
    per_row: float

    def batch_wins(self, n: int) -> bool:
        return self.fixed + self.per_row * n < self.single * n


class MicroBatcher:
    __slots__ = ("_predict_row", "_predict_rows", "_rows", "_waiters", "_max_batch", "_costs",
                 "_turn_open", "_turn_size", "_last_turn_size")

    def __init__(self, predict_row: RowPredictor, predict_rows: RowsPredictor,
                 max_batch: int, costs: Costs):
        self._predict_row = predict_row  # the fast single-row path
        self._predict_rows = predict_rows  # the batch path
        self._rows: list[np.ndarray] = []
        self._waiters: list[asyncio.Future] = []
        self._max_batch = max_batch
        self._costs = costs
        self._turn_open = False
        self._turn_size = 0
        self._last_turn_size = 0

    def direct(self) -> bool:
        """Predict this request directly (True), or ``submit`` it to the turn's batch?"""
        if self._turn_open:
            self._turn_size += 1
            return False
        self._turn_open, self._turn_size = True, 1
        asyncio.get_running_loop().call_soon(self._end_turn)
        return self._last_turn_size <= 1  # alone so far: don't make it wait

    def _end_turn(self) -> None:
        self._turn_open, self._last_turn_size = False, self._turn_size
        self._flush()

    def submit(self, row: np.ndarray) -> asyncio.Future:
        """A future of the raw prediction for ``row`` (1 x n features)."""
        future = asyncio.get_running_loop().create_future()
        self._rows.append(row)  # flushed when the turn ends (or when the batch is full)
        self._waiters.append(future)
        if len(self._rows) >= self._max_batch:
            self._flush()
        return future

    def _flush(self) -> None:
        rows, waiters = self._rows, self._waiters
        if not rows:
            return  # flushed early because the batch was full
        self._rows, self._waiters = [], []
        try:
            if self._costs.batch_wins(len(rows)):
                outputs = self._predict_rows(np.concatenate(rows))
            else:  # too few rows this turn for the batch path to pay for itself
                outputs = [self._predict_row(row) for row in rows]
        except Exception as exc:  # every waiter gets the error, none hangs
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for waiter, output in zip(waiters, outputs, strict=True):
            if not waiter.done():
                waiter.set_result(output)
