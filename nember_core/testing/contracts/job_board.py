"""The JobBoard contract: the training queue (enqueue, claim once and fairly, heartbeats, orphans
re-queued then failed, release, withdraw), a job's state as last written, cancel requests.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

import attrs
import pytest

from nember_core.credentials import new_id
from nember_core.records import ModelKey, TrainingJob, utcnow

from ..stores import StoreContract, shared

KEY = ModelKey("acct_1", "momentum", "XGBoost", "reg")


def job(**fields) -> TrainingJob:
    return TrainingJob(id=new_id("job"), account_id="acct_1", key=KEY,
                       created_at=fields.pop("created_at", utcnow()), **fields)


SPEC = {"target": "direction", "window": 2, "features": ["point1", "point2"],
        "params": {"max_depth": 3, "learning_rate": 0.25, "flag": True, "none": None},
        "data_label": "the CSV"}


def queued(account: str = "acct_1", at=None) -> TrainingJob:
    return TrainingJob(id=new_id("job"), account_id=account,
                       key=attrs.evolve(KEY, account_id=account), created_at=at or utcnow())


def ended(claimed_job: TrainingJob, **fields) -> TrainingJob:
    fields = {"state": "succeeded", "progress": 1.0, "stage": "trained", "model_id": "mdl_1-v1",
              "version": 1, "finished_at": utcnow(), **fields}
    return attrs.evolve(claimed_job, **fields)


class JobBoardContract(StoreContract):
    """The jobs contract; subclass it with ``plugin_name`` and ``options``."""

    role = "jobs"
    pytestmark = pytest.mark.asyncio

    async def test_a_job_reads_back_as_last_written(self, store):
        written = job(state="running", progress=0.4, stage="fitting")
        await store.write([written], keep=100)
        assert await store.read(written.id) == written
        done = attrs.evolve(written, state="succeeded", progress=1.0, stage="done",
                            model_id="mdl_1-v3", version=3, finished_at=utcnow())
        await store.write([done], keep=100)
        assert await store.read(written.id) == done
        failed = job(state="failed", error="Training ran out of memory.")
        await store.write([failed], keep=100)
        assert (await store.read(failed.id)).error == "Training ran out of memory."
        assert await store.read("job_nope") is None

    async def test_the_newest_jobs_are_kept(self, store):
        start = utcnow()
        jobs = [job(created_at=start + timedelta(seconds=i), state="done") for i in range(5)]
        for one in jobs:
            await store.write([one], keep=3)
        kept = [await store.read(j.id) is not None for j in jobs]
        assert kept == [False, False, True, True, True]

    async def test_a_cancel_request_survives_the_owners_next_write(self, store):
        running = job(state="running")
        await store.write([running], keep=100)
        assert await store.cancel_requested([running.id]) == set()
        await store.request_cancel(running.id)
        await store.write([attrs.evolve(running, progress=0.5)], keep=100)
        assert await store.cancel_requested([running.id, "job_nope"]) == {running.id}
        await store.request_cancel("job_nope")  # harmless

    async def test_every_process_reads_every_job(self, open_store, provider):
        shared(provider)
        owner, other = await open_store("node-1"), await open_store("node-2")
        running = job(state="running", progress=0.2)
        await owner.write([running], keep=100)
        assert await other.read(running.id) == running
        await other.request_cancel(running.id)
        assert await owner.cancel_requested([running.id]) == {running.id}

    async def test_an_open_store_answers_a_ping(self, store):
        await store.ping()  # what GET /readyz asks of every configured store

    async def test_a_queued_job_is_claimed_once_with_its_payload_intact(self, store):
        data = os.urandom(3 * 2**20) + b"\x00\xff,\n"  # any bytes, megabytes of them
        waiting = queued()
        await store.enqueue(waiting, SPEC, data)
        assert await store.read(waiting.id) == waiting  # queued, as given
        claimed = await store.claim("node-1/1/a")
        assert (claimed.spec, claimed.data, claimed.attempt) == (SPEC, data, 1)
        assert claimed.job == attrs.evolve(waiting, state="running", stage="starting")
        assert await store.read(waiting.id) == claimed.job
        assert await store.claim("node-2/1/b") is None  # taken: nobody else gets it

        fitting = attrs.evolve(claimed.job, progress=0.5, stage="fitting")
        assert await store.heartbeat("node-1/1/a", [fitting]) == set()
        assert await store.read(waiting.id) == fitting
        # Another claimer's writes change nothing, and it hears that the job is not its own.
        assert await store.heartbeat("node-2/1/b", [attrs.evolve(fitting, progress=0.9)]) == {
            waiting.id}
        assert not await store.finish("node-2/1/b", ended(fitting), keep=100)
        assert await store.read(waiting.id) == fitting

        done = ended(fitting)
        assert await store.finish("node-1/1/a", done, keep=100)
        assert await store.read(waiting.id) == done
        assert not await store.finish("node-1/1/a", done, keep=100)  # once
        assert await store.heartbeat("node-1/1/a", [fitting]) == {waiting.id}
        assert await store.claim("node-1/1/a") is None

    async def test_two_claimers_at_once_never_take_the_same_job(self, open_store, provider):
        shared(provider)
        nodes = [await open_store("node-1"), await open_store("node-2")]
        start = utcnow()
        jobs = [queued(f"acct_{i % 3}", start + timedelta(milliseconds=i)) for i in range(12)]
        for one in jobs:
            await nodes[0].enqueue(one, SPEC, one.id.encode())

        async def drain(board, worker: str) -> list[str]:
            taken = []
            while (claimed := await board.claim(worker)) is not None:
                assert claimed.data == claimed.job.id.encode()  # its own payload
                taken.append(claimed.job.id)
            return taken

        first, second = await asyncio.gather(drain(nodes[0], "node-1/1/a"),
                                             drain(nodes[1], "node-2/1/b"))
        assert not set(first) & set(second)
        assert sorted(first + second) == sorted(j.id for j in jobs)
        # And many claims at once, on both, for fewer jobs: each job once.
        more = [queued(at=utcnow()) for _ in range(3)]
        for one in more:
            await nodes[1].enqueue(one, SPEC, b"x")
        claims = await asyncio.gather(*(nodes[i % 2].claim(f"node-{i % 2}/1/{i}")
                                        for i in range(8)))
        taken = [c.job.id for c in claims if c is not None]
        assert sorted(taken) == sorted(j.id for j in more)

    async def test_claims_take_turns_between_accounts(self, open_store, provider):
        """Account a queued four jobs before b's and c's: they still go first in turn."""
        boards = [await open_store("node-1")]
        if provider.shared_across_processes:
            boards.append(await open_store("node-2"))  # the turns hold across nodes
        start = utcnow()
        names = ["a1", "a2", "a3", "a4", "b1", "c1", "b2"]
        ids = {}
        for i, name in enumerate(names):
            one = queued(f"acct_{name[0]}", start + timedelta(milliseconds=i))
            ids[one.id] = name
            await boards[0].enqueue(one, SPEC, b"x")
        # Each job claimed and finished before the next claim (one slot in the cluster).
        order = []
        for turn in range(len(names)):
            board = boards[turn % len(boards)]
            claimed = await board.claim(f"w{turn}")
            order.append(ids[claimed.job.id])
            assert await board.finish(f"w{turn}", ended(claimed.job), keep=100)
        assert order == ["a1", "b1", "c1", "a2", "b2", "a3", "a4"]

    async def test_the_accounts_with_fewest_running_jobs_come_first(self, store):
        start = utcnow()
        names = ["a1", "a2", "a3", "b1", "b2", "c1"]
        ids = {}
        for i, name in enumerate(names):
            one = queued(f"acct_{name[0]}", start + timedelta(milliseconds=i))
            ids[one.id] = name
            await store.enqueue(one, SPEC, b"x")
        # Many slots: every claim holds its job.
        order = [ids[(await store.claim(f"w{i}")).job.id] for i in range(len(names))]
        assert order == ["a1", "b1", "c1", "a2", "b2", "a3"]

    async def test_an_orphaned_job_is_requeued_then_failed_after_its_attempts(self, store):
        data = b"point1,point2,direction\n" + os.urandom(1000)
        waiting = queued()
        await store.enqueue(waiting, SPEC, data)
        first = await store.claim("node-1/1/a")
        await store.request_cancel(waiting.id)  # asked of a node that is about to die
        # A claimer that keeps writing keeps its job.
        for _ in range(3):
            await asyncio.sleep(0.15)
            assert await store.heartbeat("node-1/1/a", [first.job]) == set()
        assert await store.claim("node-2/1/b", orphaned_after=0.3) is None
        # Then it stops writing (its node died): the job goes back to the queue, whole.
        await asyncio.sleep(0.4)
        assert (await store.read(waiting.id)).state == "running"  # not for JOB_ORPHANED_AFTER
        second = await store.claim("node-2/1/b", orphaned_after=0.3)
        assert (second.job.id, second.attempt, second.spec, second.data) == (
            waiting.id, 2, SPEC, data)
        assert await store.cancel_requested([waiting.id]) == {waiting.id}  # still asked
        # The first claimer, back from the dead, holds nothing: its writes change nothing.
        assert await store.heartbeat("node-1/1/a", [first.job]) == {waiting.id}
        assert not await store.finish("node-1/1/a", ended(first.job), keep=100)
        # Orphaned on its last attempt, it fails, and stays failed.
        await asyncio.sleep(0.4)
        assert await store.claim("node-3/1/c", orphaned_after=0.3) is None
        lost = await store.read(waiting.id)
        assert lost.state == "failed" and lost.error and lost.finished_at is not None
        assert await store.heartbeat("node-2/1/b", [second.job]) == {waiting.id}
        assert not await store.finish("node-2/1/b", ended(second.job), keep=100)
        assert await store.claim("node-3/1/c", orphaned_after=0.3) is None

    async def test_a_released_job_is_queued_again_and_that_attempt_does_not_count(self, store):
        waiting = queued()
        await store.enqueue(waiting, SPEC, b"abc")
        claimed = await store.claim("node-1/1/a")
        await store.release("node-2/1/b", [waiting.id, "job_nope"])  # not its job: nothing
        assert (await store.read(waiting.id)).state == "running"
        await store.release("node-1/1/a", [waiting.id])  # its server stops
        assert await store.read(waiting.id) == waiting
        again = await store.claim("node-2/1/b")
        assert (again.job.id, again.attempt, again.data) == (claimed.job.id, 1, b"abc")

    async def test_a_queued_job_withdrawn_never_runs(self, store):
        waiting = queued()
        await store.enqueue(waiting, SPEC, b"abc")
        assert await store.withdraw(waiting.id, "cancelled by its owner")
        gone = await store.read(waiting.id)
        assert (gone.state, gone.stage, gone.error) == ("failed", "withdrawn",
                                                         "cancelled by its owner")
        assert gone.finished_at is not None
        assert await store.claim("node-1/1/a") is None
        assert not await store.withdraw(waiting.id, "again")
        assert not await store.withdraw("job_nope", "none")
        # A running job is not withdrawn: its claimer is asked to stop it.
        running = queued()
        await store.enqueue(running, SPEC, b"abc")
        await store.claim("node-1/1/a")
        assert not await store.withdraw(running.id, "cancelled by its owner")
        assert (await store.read(running.id)).state == "running"
        await store.request_cancel(running.id)
        assert await store.cancel_requested([running.id]) == {running.id}

    async def test_pruning_never_forgets_a_queued_or_running_job(self, store):
        start = utcnow()
        waiting, running = queued(at=start), queued(at=start + timedelta(seconds=1))
        for one in (waiting, running):
            await store.enqueue(one, SPEC, b"abc")
        claimed = await store.claim("node-1/1/a")  # the older one: it came first
        assert claimed.job.id == waiting.id
        finished = [job(created_at=start + timedelta(seconds=2 + i), state="succeeded")
                    for i in range(4)]
        await store.write(finished, keep=2)
        assert [await store.read(j.id) is not None for j in finished] == [False, False, True, True]
        assert (await store.read(waiting.id)).state == "running"
        assert (await store.read(running.id)).state == "queued"
        assert (await store.claim("node-1/1/b")).data == b"abc"  # its payload too
