"""The JobBoard contract: a job's state as its process last wrote it, and cancel requests."""

from __future__ import annotations

from datetime import timedelta

import attrs

from nember_core.credentials import new_id
from nember_core.records import ModelKey, TrainingJob, utcnow

from .conftest import shared

ROLE = "jobs"
KEY = ModelKey("acct_1", "momentum", "XGBoost", "reg")


def job(**fields) -> TrainingJob:
    return TrainingJob(id=new_id("job"), account_id="acct_1", key=KEY,
                       created_at=fields.pop("created_at", utcnow()), **fields)


async def test_a_job_reads_back_as_last_written(store):
    written = job(state="running", progress=0.4, stage="fitting")
    await store.write([written], keep=100)
    assert await store.read(written.id) == written
    done = attrs.evolve(written, state="succeeded", progress=1.0, stage="done", model_id="mdl_1-v3",
                        version=3, finished_at=utcnow())
    await store.write([done], keep=100)
    assert await store.read(written.id) == done
    failed = job(state="failed", error="Training ran out of memory.")
    await store.write([failed], keep=100)
    assert (await store.read(failed.id)).error == "Training ran out of memory."
    assert await store.read("job_nope") is None


async def test_the_newest_jobs_are_kept(store):
    start = utcnow()
    jobs = [job(created_at=start + timedelta(seconds=i), state="done") for i in range(5)]
    for one in jobs:
        await store.write([one], keep=3)
    assert [await store.read(j.id) is not None for j in jobs] == [False, False, True, True, True]


async def test_a_cancel_request_survives_the_owners_next_write(store):
    running = job(state="running")
    await store.write([running], keep=100)
    assert await store.cancel_requested([running.id]) == set()
    await store.request_cancel(running.id)
    await store.write([attrs.evolve(running, progress=0.5)], keep=100)
    assert await store.cancel_requested([running.id, "job_nope"]) == {running.id}
    await store.request_cancel("job_nope")  # harmless


async def test_every_process_reads_every_job(open_store, provider):
    shared(provider)
    owner, other = await open_store("node-1"), await open_store("node-2")
    running = job(state="running", progress=0.2)
    await owner.write([running], keep=100)
    assert await other.read(running.id) == running
    await other.request_cancel(running.id)
    assert await owner.cancel_requested([running.id]) == {running.id}


async def test_an_open_store_answers_a_ping(store):
    await store.ping()  # what GET /readyz asks of every configured store
