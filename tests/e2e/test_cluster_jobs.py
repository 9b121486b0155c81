"""Training jobs on the job board in PostgreSQL (PROTOCOL §5): any node may run a job, and a
job whose node died is retried by another, never left ``running``.

Two real nodes, each with an empty ``data_dir`` of its own, share a fresh PostgreSQL database
(keys, billing, models, jobs). Node A takes a slow job; node B starts; a second job submitted
to A, whose one training slot is taken, runs on B. Then A is killed (SIGKILL, with its
training process) in the middle of the slow job: once A has been silent for
``JOB_ORPHANED_AFTER``, B claims the job again (its second attempt), trains it from the CSV on
the board, and the model serves.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import asyncpg
import pytest

from nember_core.plugin_api import JOB_ORPHANED_AFTER
from tests.harness import run_cli, write_config, write_prices
from tests.helpers import ask, authed, request, training_form
from tests.shared_services import database_for_processes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SLOW_ROWS = 4000  # a RandomForest of 1,000 trees on them: some 20 s of one core


@pytest.fixture
def dsn():
    with database_for_processes() as dsn:
        yield dsn


async def api(session, node, key: str, method: str, path: str, **kwargs):
    async with session.request(method, f"http://127.0.0.1:{node.port}/api{path}",
                               headers={"Authorization": f"Bearer {key}"},
                               **kwargs) as response:
        return response.status, await response.json()


async def on_the_board(dsn: str, job_id: str) -> tuple[str, str | None, int]:
    """The job's state, claimer and attempts, as PostgreSQL has them."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT state, claimed_by, attempts FROM nember_jobs WHERE id = $1", job_id)
    finally:
        await conn.close()
    return row["state"], row["claimed_by"], row["attempts"]


async def until(check, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while not (found := await check()):
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        await asyncio.sleep(0.2)
    return found


async def test_any_node_runs_a_job_and_a_dead_nodes_job_is_retried(
        dsn, servers, tmp_path):
    shared = {"plugin": "postgres", "dsn": dsn}
    configs = {
        name: write_config(tmp_path / f"node-{name}", server={"node": f"node-{name}"},
                           key_store=shared, billing=shared, model_store=shared, jobs=shared)
        for name in ("a", "b")
    }
    run_cli(configs["a"], "accounts", "create", "trader@example.com")
    key = run_cli(configs["a"], "keys", "create", "--account", "trader@example.com",
                  "--scope", "manage").stdout.strip().splitlines()[-1]
    small = write_prices(tmp_path / "small.csv").read_bytes()
    large = write_prices(tmp_path / "large.csv", rows=SLOW_ROWS).read_bytes()
    node_a = servers(configs["a"])

    async with aiohttp.ClientSession() as session:
        async def state(node, job_id: str) -> dict:
            status, job = await api(session, node, key, "GET", f"/jobs/{job_id}")
            assert status == 200, job
            return job

        # Node A, alone, takes the slow job into its one training slot.
        status, slow = await api(session, node_a, key, "POST", "/models", data=training_form(
            large, strat="slow", model="RandomForest", params='{"n_estimators": 1000}'))
        assert status == 202, slow
        await until(lambda: _in_state(state(node_a, slow["id"]), "running"), 30,
                    "slow job running")
        assert (await on_the_board(dsn, slow["id"]))[1].startswith("node-a/")

        # Node B, its data_dir empty, runs the job submitted to A meanwhile.
        node_b = servers(configs["b"])
        status, quick = await api(session, node_a, key, "POST", "/models",
                                  data=training_form(small, strat="quick"))
        assert status == 202, quick
        done = await until(lambda: _ended(state(node_a, quick["id"])), 60, "quick job done")
        assert done["state"] == "succeeded", done
        state_, claimer, attempts = await on_the_board(dsn, quick["id"])
        assert (state_, claimer.split("/")[0], attempts) == ("succeeded", "node-b", 1)
        for node in (node_a, node_b):
            ws = await authed(session, node.url, key)
            assert (await ask(ws, request(strat_name="quick")))["type"] == "success"
            await ws.close()

        # A dies in the middle of the slow job, with its training process.
        state_, claimer, _ = await on_the_board(dsn, slow["id"])
        assert state_ == "running" and claimer.startswith("node-a/")
        node_a.kill()
        killed = time.monotonic()

        # B reports it running (never failed) until A's silence counts, then runs it again.
        async def retried():
            job = await state(node_b, slow["id"])
            assert job["state"] != "failed", job
            return job["state"] == "succeeded" and job

        done = await until(retried, JOB_ORPHANED_AFTER + 120, "slow job retried on node B")
        assert time.monotonic() - killed > JOB_ORPHANED_AFTER - 6  # not before A was silent
        state_, claimer, attempts = await on_the_board(dsn, slow["id"])
        assert (state_, claimer.split("/")[0], attempts) == ("succeeded", "node-b", 2)
        assert done["model_id"] and done["error"] is None
        ws = await authed(session, node_b.url, key)
        answer = await ask(ws, request(strat_name="slow", model_name="RandomForest"))
        assert answer["type"] == "success", answer
        await ws.close()


async def _in_state(job, wanted: str) -> bool:
    job = await job
    assert job["state"] not in ("failed", "succeeded") or job["state"] == wanted, job
    return job["state"] == wanted


async def _ended(job) -> dict | None:
    job = await job
    return job if job["state"] in ("succeeded", "failed") else None
