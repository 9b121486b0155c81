"""``plugin_api.Together``: calls made at once, served in batches, each caller its own."""

from __future__ import annotations

import asyncio

import pytest

from nember_core.plugin_api import Together


class Doubler:
    """A store's round trip: doubles numbers, refuses negative ones (the whole batch fails)."""

    def __init__(self):
        self.batches: list[list[int]] = []

    async def run(self, jobs: list[int]) -> list[int]:
        self.batches.append(list(jobs))
        await asyncio.sleep(0.01)  # the round trip, during which others queue up
        if any(job < 0 for job in jobs):
            raise ValueError(f"negative among {jobs}")
        return [2 * job for job in jobs]


async def test_callers_at_once_share_a_few_batches_and_each_gets_its_own_result():
    doubler = Doubler()
    double = Together(doubler.run)
    assert await asyncio.gather(*(double(n) for n in range(100))) == [2 * n for n in range(100)]
    assert len(doubler.batches) <= 2  # the first caller's batch, then everyone else's
    assert sorted(n for batch in doubler.batches for n in batch) == list(range(100))


async def test_callers_a_few_loop_turns_apart_share_a_batch():
    """A storm's connections reach a store a few turns of the loop apart, not in one: a batch
    waits a few turns for them before it starts."""
    doubler = Doubler()
    double = Together(doubler.run)
    calls = []
    for n in range(4):
        calls.append(asyncio.ensure_future(double(n)))
        await asyncio.sleep(0)  # the loop turns once before the next caller comes
    assert await asyncio.gather(*calls) == [0, 2, 4, 6]
    assert doubler.batches == [[0, 1, 2, 3]]


async def test_a_bad_job_fails_only_its_own_caller():
    double = Together(Doubler().run, split_on=(ValueError,))
    results = await asyncio.gather(*(double(n) for n in (1, -1, 2, 3)), return_exceptions=True)
    assert results[0] == 2 and results[2:] == [4, 6]
    assert isinstance(results[1], ValueError)


async def test_a_store_that_is_down_fails_the_batch_at_once_not_job_by_job():
    """A timeout is no job's fault: trying each job alone would make every caller wait one
    timeout per job before it."""
    doubler = Doubler()
    double = Together(doubler.run, split_on=(KeyError,))
    results = await asyncio.gather(*(double(n) for n in (1, -1, 2, 3)), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    assert doubler.batches == [[1, -1, 2, 3]]  # and no retries


async def test_a_caller_cancelled_before_its_batch_starts_is_left_out():
    doubler = Doubler()
    double = Together(doubler.run)
    first = asyncio.ensure_future(double(1))
    while not doubler.batches:  # until the first batch is running
        await asyncio.sleep(0)
    gone = asyncio.ensure_future(double(5))
    kept = asyncio.ensure_future(double(6))
    await asyncio.sleep(0)
    gone.cancel()
    assert (await first, await kept) == (2, 12)
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert doubler.batches == [[1], [6]]


async def test_callers_are_not_left_waiting_when_their_batch_is_cancelled():
    """A loop that stops cancels the batch's task: its callers are cancelled too, not left
    waiting for an answer (a server's shutdown would wait for them forever)."""
    double = Together(Doubler().run)
    gathered = asyncio.ensure_future(double(1))
    await asyncio.sleep(0)  # submitted: the batch is gathering
    running = asyncio.ensure_future(double(2))
    while not running.done() and double._running is not None and len(double._queued) < 2:
        await asyncio.sleep(0)
    double._running.cancel()
    for call in (gathered, running):
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(call, 5)
    assert await double(3) == 6  # and the next caller starts a batch of its own
