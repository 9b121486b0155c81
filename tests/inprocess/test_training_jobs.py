"""Training jobs can be stopped: cancelled by their owner (queued or running), or failed when
they run past server.training_timeout or server.training_memory_mb, or when their process dies;
a stopped job stores no model and leaves no process. Jobs are queued on the job board, so a
server other than the one that accepted a job may run it: one with a free slot, or the next
one when a server stops."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sqlite3
import sys

import aiohttp
import pytest

from nember_core.app.nember import Nember
from nember_core.app.server import create_app
from nember_core.web import CONTEXT
from tests.harness import write_config, write_prices
from tests.helpers import REQUEST, request, training_form

from .conftest import ask, authed

SLOW = '{"n_estimators": 1000}'  # a RandomForest of 1,000 trees: seconds, not minutes
LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"),
                           reason="the memory cap is Linux's RLIMIT_AS")


def _form(prepared, strat: str, params: str = SLOW, data: bytes | None = None
          ) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("data", data or prepared.data.read_bytes(), filename="prices.csv",
                   content_type="text/csv")
    for name, value in {"strat": strat, "model": "RandomForest", "type": "class",
                        "target": "direction", "window": "2", "params": params}.items():
        form.add_field(name, value)
    return form


async def _call(client, method: str, path: str, key: str, **kwargs):
    async with client.request(method, path, headers={"Authorization": f"Bearer {key}"},
                              **kwargs) as response:
        return response.status, await response.json()


async def _until(client, key: str, job_id: str, states: tuple[str, ...], timeout: float = 60):
    for _ in range(int(timeout / 0.05)):
        status, job = await _call(client, "GET", f"/api/jobs/{job_id}", key)
        assert status == 200
        if job["state"] in states:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job still {job['state']}")


def _training_processes() -> list:
    return [p for p in multiprocessing.active_children() if p.name.startswith("nember-train")]


async def _training_process():
    """The training process, once its job (claimed: ``running``) started one."""
    for _ in range(200):
        if found := _training_processes():
            (process,) = found
            return process
        await asyncio.sleep(0.02)
    raise AssertionError("no training process")


async def test_a_running_job_is_cancelled_by_its_owner(client, prepared):
    status, job = await _call(client, "POST", "/api/models", prepared.key,
                              data=_form(prepared, "cancel-running"))
    assert status == 202
    await _until(client, prepared.key, job["id"], ("running",))
    assert await _training_process()
    # Another account can't; the owner can.
    assert (await _call(client, "DELETE", f"/api/jobs/{job['id']}", prepared.other_key))[0] == 404
    status, cancelled = await _call(client, "DELETE", f"/api/jobs/{job['id']}", prepared.key)
    assert status == 200 and cancelled["id"] == job["id"]
    ended = await _until(client, prepared.key, job["id"], ("failed", "succeeded"))
    assert (ended["state"], ended["error"]) == ("failed", "cancelled by its owner")
    assert ended["finished_at"] is not None and ended["model_id"] is None
    for _ in range(100):
        if not _training_processes():
            break
        await asyncio.sleep(0.05)
    assert not _training_processes()  # its process is gone
    status, models = await _call(client, "GET", "/api/models", prepared.key)
    assert not [m for m in models["items"] if m["strat"] == "cancel-running"]
    # Cancelling a job that ended changes nothing.
    assert (await _call(client, "DELETE", f"/api/jobs/{job['id']}", prepared.key))[1] == ended


async def test_a_queued_job_is_cancelled_before_it_starts(client, prepared):
    first = (await _call(client, "POST", "/api/models", prepared.key,
                         data=_form(prepared, "cancel-first")))[1]
    queued = (await _call(client, "POST", "/api/models", prepared.key,
                          data=_form(prepared, "cancel-queued")))[1]
    assert (await _call(client, "GET", f"/api/jobs/{queued['id']}", prepared.key))[1][
        "state"] == "queued"  # one training slot: it waits
    await _call(client, "DELETE", f"/api/jobs/{queued['id']}", prepared.key)
    ended = await _until(client, prepared.key, queued["id"], ("failed", "succeeded"))
    assert (ended["state"], ended["error"]) == ("failed", "cancelled by its owner")
    await _call(client, "DELETE", f"/api/jobs/{first['id']}", prepared.key)
    await _until(client, prepared.key, first["id"], ("failed", "succeeded"))


@pytest.fixture
async def hasty(aiohttp_client, prepared, tmp_path):
    """A server whose jobs may train for half a second."""
    data_dir = Nember.load(str(prepared.config)).config.data_dir
    config = write_config(tmp_path, server={"training_timeout": 0.5}, data_dir=data_dir)
    return await aiohttp_client(create_app(Nember.load(str(config))))


async def test_a_job_past_the_time_limit_fails_and_stores_nothing(hasty, prepared):
    status, job = await _call(hasty, "POST", "/api/models", prepared.key,
                              data=_form(prepared, "too-slow"))
    assert status == 202
    ended = await _until(hasty, prepared.key, job["id"], ("failed", "succeeded"))
    assert ended["state"] == "failed"
    assert ended["error"] == ("training took longer than the limit of 0.5 s "
                              "(server.training_timeout)")
    status, models = await _call(hasty, "GET", "/api/models", prepared.key)
    assert not [m for m in models["items"] if m["strat"] == "too-slow"]


async def test_uploads_a_killed_server_left_are_swept_when_a_server_starts(
    aiohttp_client, prepared, tmp_path
):
    import os
    import time

    data_dir = Nember.load(str(prepared.config)).config.data_dir
    uploads = data_dir / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    stale, fresh = uploads / "stale-test.csv", uploads / "fresh-test.csv"
    for upload in (stale, fresh):
        upload.write_text("a,b\n1,2\n")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(stale, (two_days_ago, two_days_ago))
    config = write_config(tmp_path, data_dir=data_dir)
    await aiohttp_client(create_app(Nember.load(str(config))))
    assert not stale.exists()
    assert fresh.exists()  # may still be a queued job's, in another server process
    fresh.unlink()


@pytest.fixture
async def capped(aiohttp_client, prepared, tmp_path):
    """A server whose training processes may map 1 GB."""
    data_dir = Nember.load(str(prepared.config)).config.data_dir
    config = write_config(tmp_path, server={"training_memory_mb": 1024}, data_dir=data_dir)
    return await aiohttp_client(create_app(Nember.load(str(config))))


def _wide_csv(rows: int = 2000, features: int = 400) -> bytes:
    """1.6 MB of CSV whose windows of 1,000 rows make a 3.2 GB feature matrix."""
    lines = [",".join([*(f"f{i}" for i in range(features)), "direction"])]
    cells = ",".join(str(i % 10) for i in range(features))
    lines += [f"{cells},{'up' if row % 2 else 'down'}" for row in range(rows)]
    return ("\n".join(lines) + "\n").encode()


@LINUX
async def test_a_job_past_the_memory_cap_fails_and_the_server_serves_on(capped, prepared):
    status, job = await _call(capped, "POST", "/api/models", prepared.key, data=training_form(
        _wide_csv(), strat="too-big", window="1000", features=None))
    assert status == 202
    ended = await _until(capped, prepared.key, job["id"], ("failed", "succeeded"), timeout=30)
    assert (ended["state"], ended["error"]) == ("failed", (
        "training ran out of memory (limit 1024 MB, server.training_memory_mb): "
        "use less data, a smaller window or smaller hyperparameters"))
    status, models = await _call(capped, "GET", "/api/models", prepared.key)
    assert not [m for m in models["items"] if m["strat"] == "too-big"]
    # The cap leaves an ordinary job room, and the server predicts as before.
    status, job = await _call(capped, "POST", "/api/models", prepared.key, data=training_form(
        prepared.data.read_bytes(), strat="fits"))
    ended = await _until(capped, prepared.key, job["id"], ("failed", "succeeded"), timeout=30)
    assert ended["state"] == "succeeded", ended["error"]
    ws = await authed(capped, prepared.key)
    assert (await ask(ws, REQUEST))["prediction"] in ("up", "down")
    await ws.close()


@LINUX
async def test_a_job_whose_process_dies_fails_and_says_why(client, prepared):
    status, job = await _call(client, "POST", "/api/models", prepared.key,
                              data=_form(prepared, "killed"))
    await _until(client, prepared.key, job["id"], ("running",))
    process = await _training_process()
    os.kill(process.pid, signal.SIGKILL)  # as the kernel's OOM killer would
    ended = await _until(client, prepared.key, job["id"], ("failed", "succeeded"))
    assert (ended["state"], ended["error"]) == ("failed", (
        "the training process died (killed by SIGKILL) before it finished, most likely out of "
        "memory (limit 4096 MB, server.training_memory_mb): use less data, a smaller window or "
        "smaller hyperparameters"))
    assert (await _call(client, "GET", "/api/models", prepared.key))[0] == 200


def _worker(client) -> str:
    """The name the app's training jobs claim jobs under."""
    return client.app[CONTEXT].services.models._jobs.worker


def _on_the_board(prepared, job_id: str) -> tuple[str, str | None, int]:
    """The job's state, claimer and attempts, as the SQLite board has them."""
    data_dir = Nember.load(str(prepared.config)).config.data_dir
    with sqlite3.connect(data_dir / "jobs.sqlite3") as db:
        return db.execute("SELECT state, claimed_by, attempts FROM jobs WHERE id = ?",
                          (job_id,)).fetchone()


async def test_a_job_accepted_by_a_busy_server_is_run_by_another(
    client, aiohttp_client, prepared, tmp_path
):
    long = write_prices(tmp_path / "long.csv", rows=3000).read_bytes()  # half a minute's work
    slow = (await _call(client, "POST", "/api/models", prepared.key,
                        data=_form(prepared, "busy", data=long)))[1]
    await _until(client, prepared.key, slow["id"], ("running",))  # the first's one slot
    other = await aiohttp_client(create_app(Nember.load(str(prepared.config))))  # same stores
    status, job = await _call(client, "POST", "/api/models", prepared.key, data=training_form(
        prepared.data.read_bytes(), strat="ran-elsewhere"))
    assert status == 202
    ended = await _until(client, prepared.key, job["id"], ("failed", "succeeded"))
    assert ended["state"] == "succeeded", ended["error"]
    assert _on_the_board(prepared, job["id"]) == ("succeeded", _worker(other), 1)
    assert _on_the_board(prepared, slow["id"]) == ("running", _worker(client), 1)
    ws = await authed(client, prepared.key)  # the model serves where the job was accepted
    assert (await ask(ws, request(strat_name="ran-elsewhere")))["type"] == "success"
    await ws.close()
    await _call(other, "DELETE", f"/api/jobs/{slow['id']}", prepared.key)  # from the other
    stopped = await _until(other, prepared.key, slow["id"], ("failed", "succeeded"))
    assert (stopped["state"], stopped["error"]) == ("failed", "cancelled by its owner")


async def test_a_job_of_a_server_that_stops_is_run_by_the_next(
    aiohttp_client, prepared, tmp_path
):
    long = write_prices(tmp_path / "long.csv", rows=3000).read_bytes()
    first = await aiohttp_client(create_app(Nember.load(str(prepared.config))))
    job = (await _call(first, "POST", "/api/models", prepared.key,
                       data=_form(prepared, "handed-over", data=long)))[1]
    await _until(first, prepared.key, job["id"], ("running",))
    await first.close()  # its process gives the job back to the queue; the attempt is free
    assert _on_the_board(prepared, job["id"]) == ("queued", None, 0)
    second = await aiohttp_client(create_app(Nember.load(str(prepared.config))))
    await _until(second, prepared.key, job["id"], ("running",))
    assert _on_the_board(prepared, job["id"]) == ("running", _worker(second), 1)
    await _call(second, "DELETE", f"/api/jobs/{job['id']}", prepared.key)
    ended = await _until(second, prepared.key, job["id"], ("failed", "succeeded"))
    assert (ended["state"], ended["error"]) == ("failed", "cancelled by its owner")
