"""``nember serve --workers 2``: two processes on one port act as one server.

Connections land on both workers (SO_REUSEPORT); the per-account limit, the connection
listing and closing work across them through the shared SQLite registry; a training job
started through one worker is reported by the other; SIGTERM drains both; a worker that dies
is replaced; configs that can't be shared are refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from tests.harness import PASSWORD, Server, run_cli, wait_until, write_config
from tests.helpers import ask, authed

pytestmark = pytest.mark.e2e  # real nember processes: `pytest -m e2e`

FRAME = {"strat_name": "example_strategy", "model_name": "DecisionTree", "model_type": "class",
         "DataPoints": [{"point1": 0.1, "point2": -0.3}, {"point1": 0.5, "point2": 0.2}]}


class Workers(Server):
    """A `nember serve` supervisor: the configs here say ``server.workers: 2``."""

    def worker_pids(self) -> list[int]:
        """The live workers' pids, as the supervisor announced them."""
        pids = [e["pid"] for e in self.events("supervisor.worker_started")]
        return [pid for pid in pids if not _zombie(pid)]

    def listening_nodes(self) -> set[str]:
        return {e["node"] for e in self.events("server.listening")}


@pytest.fixture
def workers(trained, tmp_path, monkeypatch, servers):
    """A supervisor of two workers over the trained workspace's data."""
    config = write_config(tmp_path, server={"workers": 2, "max_connections_per_account": 40},
                          data_dir=trained.data_dir,
                          connection_registry={"plugin": "sqlite", "heartbeat": 0.2})
    supervisor = servers(config, kind=Workers)
    try:
        wait_until(lambda: len(supervisor.listening_nodes()) == 2, what="two workers listening")
        yield supervisor
    finally:
        _stop(supervisor)


def _stop(supervisor: Workers) -> None:
    pids = supervisor.worker_pids()
    supervisor.terminate()
    for pid in pids:  # a worker that outlived its supervisor would hold the test's files
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"worker {pid} still runs"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


async def _api(port: int, key: str, method: str, path: str, **kwargs):
    # A session per call: a new TCP connection, so calls are spread over the workers.
    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"http://127.0.0.1:{port}/api{path}",
                                   headers={"Authorization": f"Bearer {key}"},
                                   **kwargs) as response:
            return response.status, await response.json()


async def test_connections_spread_over_workers_and_are_listed_and_closed_as_one(
    workers, trained
):
    async with aiohttp.ClientSession() as session:
        sockets = [await authed(session, workers.url, trained.key) for _ in range(16)]
        for ws in sockets:
            answer = await ask(ws, FRAME)
            assert answer["seq_num"] == 1 and answer["prediction"] in ("up", "down")
        opened = workers.events("connection.open")
        # 16 connections from 16 source ports: both workers got some.
        assert len({e["node"] for e in opened}) == 2, opened

        await asyncio.sleep(0.5)  # a heartbeat: each worker has published its counters
        for _ in range(4):  # whichever worker answers, it lists every connection
            status, listed = await _api(workers.port, trained.key, "GET", "/connections")
            assert status == 200
            mine = [c for c in listed["items"] if c["id"] in {e["connection_id"] for e in opened}]
            assert len(mine) == 16
            assert {c["node"] for c in mine} == workers.listening_nodes()
            assert all(c["predictions"] == 1 for c in mine)

        for conn in mine:  # closing goes to whichever worker holds the connection
            status, answer = await _api(workers.port, trained.key, "DELETE",
                                        f"/connections/{conn['id']}")
            assert (status, answer) == (200, {"id": conn["id"], "closed": True})
        for ws in sockets:
            message = await ws.receive(timeout=10)
            assert message.type == aiohttp.WSMsgType.CLOSE
            assert message.data == 4000


async def test_metrics_add_up_the_figures_of_every_worker(workers, trained):
    from prometheus_client.parser import text_string_to_metric_families

    async def scrape(session) -> dict:
        async with session.get(f"http://127.0.0.1:{workers.port}/metrics") as response:
            text = await response.text()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    predicted = ("nember_predictions_total",
                 (("family", "DecisionTree"), ("model_type", "class")))
    async with aiohttp.ClientSession() as session:
        before = (await scrape(session)).get(predicted, 0)
        sockets = [await authed(session, workers.url, trained.key) for _ in range(12)]
        for ws in sockets:
            await ask(ws, FRAME)
        assert len({e["node"] for e in workers.events("connection.open")}) == 2
        await asyncio.sleep(1.5)  # each worker publishes its figures every second
        for _ in range(6):  # whichever worker answers the scrape, it counts both
            figures = await scrape(session)
            assert figures[predicted] - before == 12
            assert figures[("nember_connections_open", ())] == 12
        for ws in sockets:
            await ws.close()


async def test_the_connection_limit_counts_every_worker(trained, tmp_path, servers):
    config = write_config(tmp_path, server={"workers": 2, "max_connections_per_account": 3},
                          data_dir=trained.data_dir)
    supervisor = servers(config, kind=Workers)
    try:
        wait_until(lambda: len(supervisor.listening_nodes()) == 2, what="two workers listening")
        async with aiohttp.ClientSession() as session:
            held = [await authed(session, supervisor.url, trained.key) for _ in range(3)]
            for _ in range(4):  # on either worker, the fourth is refused
                async with session.ws_connect(supervisor.url) as ws:
                    await ws.send_str(trained.key)
                    answer = json.loads(await ws.receive_str(timeout=10))
                    assert answer == {"status": "error",
                                      "message": "Connection limit reached for this API key."}
            await held[0].close()
            await asyncio.sleep(0.3)
            held.append(await authed(session, supervisor.url, trained.key))  # a free slot
            for ws in held[1:]:
                await ws.close()
    finally:
        _stop(supervisor)


async def test_a_training_job_is_reported_by_every_worker(workers, trained):
    form = aiohttp.FormData()
    form.add_field("data", trained.data.read_bytes(), filename="prices.csv",
                   content_type="text/csv")
    for name, value in {"strat": "workers", "model": "DecisionTree", "type": "reg",
                        "target": "move", "window": "2", "features": "point1,point2"}.items():
        form.add_field(name, value)
    status, job = await _api(workers.port, trained.key, "POST", "/models", data=form)
    assert status == 202, job
    seen = set()
    for _ in range(300):
        status, job = await _api(workers.port, trained.key, "GET", f"/jobs/{job['id']}")
        assert status == 200, job  # never "no such job" from the worker that didn't start it
        seen.add(job["state"])
        if job["state"] in ("succeeded", "failed"):
            break
        await asyncio.sleep(0.1)
    assert job["state"] == "succeeded", job
    for _ in range(6):  # and both still know it once it is done
        status, again = await _api(workers.port, trained.key, "GET", f"/jobs/{job['id']}")
        assert (status, again["state"], again["version"]) == (200, "succeeded", job["version"])


async def test_sigterm_drains_both_workers_with_1001(workers, trained):
    async with aiohttp.ClientSession() as session:
        sockets = [await authed(session, workers.url, trained.key) for _ in range(8)]
        assert len({e["node"] for e in workers.events("connection.open")}) == 2
        workers.process.send_signal(signal.SIGTERM)
        for ws in sockets:
            message = await ws.receive(timeout=15)
            assert (message.type, message.data) == (aiohttp.WSMsgType.CLOSE, 1001)
    assert workers.process.wait(30) == 0
    time.sleep(0.5)  # the resource tracker, the last to exit, reports after its processes
    assert "leaked semaphore" not in workers.log() and "Traceback" not in workers.log()


async def test_a_worker_that_dies_is_replaced(workers, trained):
    victim = workers.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(workers.worker_pids()) == 2 and victim not in workers.worker_pids(),
               what="a replacement worker")
    wait_until(lambda: len(workers.events("server.listening")) == 3,
               what="the replacement listening")
    async with aiohttp.ClientSession() as session:
        for _ in range(6):
            ws = await authed(session, workers.url, trained.key)
            assert (await ask(ws, FRAME))["prediction"] in ("up", "down")
            await ws.close()
    exited = workers.events("supervisor.worker_exited")
    assert len(exited) == 1 and exited[0]["code"] == -signal.SIGKILL


@pytest.mark.parametrize("override,message", [
    ({"connection_registry": {"plugin": "memory"}},
     "connection_registry.plugin: 'memory' keeps each process's state to itself"),
    ({"server": {"port": 0}}, "server.port: 2 workers need a fixed port, not 0"),
])
def test_configs_workers_cannot_share_are_refused(tmp_path, override, message):
    config = write_config(tmp_path, server=override.pop("server", None), **override)
    result = run_cli(config, "serve", "--workers", "2", check=False)
    assert result.returncode == 1
    assert message in result.stderr


def test_a_worker_that_cannot_start_stops_the_supervisor(tmp_path):
    config = write_config(tmp_path)
    port = __import__("yaml").safe_load(config.read_text())["server"]["port"]
    import socket

    with socket.socket() as taken:  # the port is busy, without SO_REUSEPORT
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = run_cli(config, "serve", "--workers", "2", check=False,
                         env={"NEMBER_PASSWORD": PASSWORD})
    assert result.returncode == 1
    assert "exited while starting" in result.stderr
