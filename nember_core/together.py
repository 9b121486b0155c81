"""Calls that coroutines make at once, served together: one round trip for a storm."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Job = TypeVar("Job")
Result = TypeVar("Result")

# Loop turns a batch waits before it starts, for the jobs a storm's other connections have
# sent but the loop has not read yet. An idle loop turns in microseconds; a busy one, a storm
# of reconnects, in much more, and gathers that much more: a SQLite store then commits (and
# fsyncs) a few times less often. 16 took an accept storm on one core from 1,320 to 1,870
# accepts per second (0 turns: batches of 2-8 jobs; 16: of 16-35); ``benchmarks/run.py``.
GATHERING_TURNS = 16


def _settle(done: asyncio.Future, result: object = None,
            error: BaseException | None = None) -> None:
    if not done.done():  # its caller may have been cancelled meanwhile
        if error is None:
            done.set_result(result)
        else:
            done.set_exception(error)


class Together(Generic[Job, Result]):
    """Jobs that coroutines hand in while a batch runs, or in the few loop turns before it
    starts, make the next batch: ``run(jobs)`` once per batch, so a storm of callers (bots
    reconnecting at once) costs a store a few round trips, not one each. Each caller gets its
    job's result (``run`` returns them in order) once its batch is done. A batch that fails
    with an error in ``split_on`` (one a single job can cause: a duplicate key) is run again
    job by job, so that job fails only its own caller; any other error (the store is down or
    slow) goes to every caller of the batch at once. A caller cancelled before its batch
    starts is left out; one cancelled later leaves its job to run (``submit`` and
    ``asyncio.shield`` let it undo what it must).

    For example, key look-ups: ``lookup = Together(fetch_keys)``, where ``fetch_keys(hashes)``
    reads every hash in one query and returns a key or None per hash; then ``await
    lookup(key_hash(secret))``."""

    def __init__(self, run: Callable[[list[Job]], Awaitable[Sequence[Result]]],
                 split_on: tuple[type[Exception], ...] = ()):
        self._run = run
        self._split_on = split_on
        self._queued: list[tuple[Job, asyncio.Future]] = []
        self._running: asyncio.Future | None = None

    async def __call__(self, job: Job) -> Result:
        return await self.submit(job)

    def submit(self, job: Job) -> asyncio.Future[Result]:
        """The job's future result (cancelled before its batch starts: left out)."""
        done = asyncio.get_running_loop().create_future()
        self._queued.append((job, done))
        if self._running is None:
            self._running = asyncio.ensure_future(self._run_queued())
        return done

    async def _run_queued(self) -> None:
        batch: list[tuple[Job, asyncio.Future]] = []
        try:
            while self._queued:  # whatever queued up during the last batch goes next
                for _ in range(GATHERING_TURNS):
                    await asyncio.sleep(0)
                batch = [queued for queued in self._queued if not queued[1].done()]
                self._queued = []
                try:
                    results = await self._run([job for job, _ in batch])
                except Exception as exc:
                    if len(batch) == 1 or not isinstance(exc, self._split_on):
                        for _, done in batch:
                            _settle(done, error=exc)
                        continue
                    for job, done in batch:
                        try:
                            (result,) = await self._run([job])
                        except Exception as alone:
                            _settle(done, error=alone)
                        else:
                            _settle(done, result)
                    continue
                for (_, done), result in zip(batch, results, strict=True):
                    _settle(done, result)
        except BaseException:  # cancelled (its loop is stopping): no caller waits forever
            for _, done in [*batch, *self._queued]:
                done.cancel()
            self._queued = []
            raise
        finally:
            self._running = None
