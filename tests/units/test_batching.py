"""Micro-batching: requests of one event-loop turn share one model call; a lone one waits
for nothing; errors reach every waiter."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from nember_core.serving.batching import Costs, MicroBatcher


class Model:
    def __init__(self, fail: bool = False):
        self.single_calls = 0
        self.batches: list[int] = []
        self.fail = fail

    def row(self, row):
        self.single_calls += 1
        return float(row[0, 0]) * 10

    def rows(self, rows):
        self.batches.append(len(rows))
        if self.fail:
            raise RuntimeError("library failure")
        return list(rows[:, 0] * 10)


CHEAP_BATCHES = Costs(single=100.0, fixed=50.0, per_row=5.0)  # a batch of 2+ wins


async def test_requests_of_one_turn_share_one_batch_call():
    model = Model()
    batcher = MicroBatcher(model.row, model.rows, max_batch=256, costs=CHEAP_BATCHES)
    assert batcher.direct()  # alone so far: the first is predicted directly by the caller
    futures = []
    for i in range(1, 10):
        assert not batcher.direct()  # the same turn: into the batch
        futures.append(batcher.submit(np.array([[float(i)]])))
    assert await asyncio.gather(*futures) == [i * 10.0 for i in range(1, 10)]
    assert model.batches == [9] and model.single_calls == 0
    await asyncio.sleep(0)
    assert not batcher.direct()  # the last turn was busy: even the first one joins the batch
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert batcher.direct()  # after a lone turn, direct again


async def test_a_batch_too_small_to_pay_goes_row_by_row():
    model = Model()
    dear_batches = Costs(single=10.0, fixed=500.0, per_row=5.0)
    batcher = MicroBatcher(model.row, model.rows, max_batch=256, costs=dear_batches)
    batcher.direct()
    futures = [batcher.submit(np.array([[float(i)]])) for i in range(3)]
    assert await asyncio.gather(*futures) == [0.0, 10.0, 20.0]
    assert model.batches == [] and model.single_calls == 3


async def test_a_full_batch_is_flushed_at_once():
    model = Model()
    batcher = MicroBatcher(model.row, model.rows, max_batch=4, costs=CHEAP_BATCHES)
    batcher.direct()
    futures = [batcher.submit(np.array([[1.0]])) for _ in range(6)]
    await asyncio.gather(*futures)
    assert model.batches == [4, 2]


async def test_a_failing_batch_fails_every_waiter():
    model = Model(fail=True)
    batcher = MicroBatcher(model.row, model.rows, max_batch=256, costs=CHEAP_BATCHES)
    batcher.direct()
    futures = [batcher.submit(np.array([[1.0]])) for _ in range(3)]
    for future in futures:
        with pytest.raises(RuntimeError):
            await future
