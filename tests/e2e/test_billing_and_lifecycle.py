"""Billing (one durable charge per accepted connection), usage, shutdown, revocation."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time

import aiohttp
import pytest

from tests.harness import Server, run_cli, write_config, write_prices
from tests.helpers import ask, authed, request

pytestmark = pytest.mark.e2e  # real nember processes: `pytest -m e2e`


def ledger(workspace):
    db = sqlite3.connect(workspace.folder / "data" / "billing.sqlite3")
    try:
        charges = db.execute("SELECT connection_id, amount, currency FROM charges").fetchall()
        usage = db.execute(
            "SELECT connection_id, closed_at, close_code, close_reason, predictions, errors "
            "FROM usage"
        ).fetchall()
    finally:
        db.close()
    return charges, {row[0]: row[1:] for row in usage}


def own_server(servers, workspace, tmp_path, **server) -> Server:
    config = write_config(tmp_path, server=server, data_dir=workspace.data_dir,
                          billing={"price": "0.25", "currency": "EUR"})
    return servers(config)


async def test_one_charge_per_accepted_connection_none_for_refused(trained, tmp_path, servers):
    server = own_server(servers, trained, tmp_path)
    before, _ = ledger(trained)
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            ws = await authed(session, server.url, trained.key)
            await ask(ws, request())
            await ws.close()
        for bad in ["nmb_nope", ""]:
            async with session.ws_connect(server.url) as ws:
                await ws.send_str(bad)
                await ws.receive(timeout=10)
    after, _ = ledger(trained)
    new = after[len(before):]
    assert len(new) == 3
    assert {(amount, currency) for _, amount, currency in new} == {("0.25", "EUR")}


async def test_usage_is_recorded_when_the_connection_ends(trained, tmp_path, servers):
    server = own_server(servers, trained, tmp_path)
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, trained.key)
        for frame in [request(), request(), "bad", request(model_name="Nope")]:
            await ask(ws, frame)
        await ws.close()
    await asyncio.sleep(0.5)
    opened = server.events("connection.open")
    assert len(opened) == 1
    _, usage = ledger(trained)
    closed_at, code, reason, predictions, errors = usage[opened[0]["connection_id"]]
    assert closed_at is not None and code == 1000 and reason == "closed by client"
    assert (predictions, errors) == (2, 2)


async def test_charge_survives_sigkill_right_after_the_auth_answer(trained, tmp_path, servers):
    server = own_server(servers, trained, tmp_path)
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, trained.key)
        server.kill()  # SIGKILL: no chance to flush anything after the answer
        await ws.close()
    opened = server.events("connection.open")
    charges, usage = ledger(trained)
    assert opened[-1]["connection_id"] in {c[0] for c in charges}
    assert usage[opened[-1]["connection_id"]][0] is None  # never closed cleanly: no close time


async def test_usage_left_open_by_a_killed_server_is_closed_by_the_next(trained, tmp_path,
                                                                        servers):
    killed = own_server(servers, trained, tmp_path / "killed")
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, killed.url, trained.key)
        await ask(ws, request())
        killed.kill()
        await ws.close()
    orphan = killed.events("connection.open")[-1]["connection_id"]
    # What half a minute of waiting would do: the row is older than a live server's pending
    # records can be, and the registry has forgotten the dead process (5 heartbeats).
    db = sqlite3.connect(trained.folder / "data" / "billing.sqlite3")
    with db:
        db.execute("UPDATE usage SET opened_at = '2026-01-01T00:00:00+00:00' "
                   "WHERE connection_id = ?", (orphan,))
    db.close()
    await asyncio.sleep(6)
    survivor = own_server(servers, trained, tmp_path / "survivor")
    async with aiohttp.ClientSession() as session:
        live = await authed(session, survivor.url, trained.key)  # open, and must stay so
        deadline = time.monotonic() + 10
        while ledger(trained)[1][orphan][0] is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        closed_at, code, reason, *_ = ledger(trained)[1][orphan]
        assert closed_at is not None and (code, reason) == (1006, "server process ended")
        assert await ask(live, request()) and not live.closed
        mine = survivor.events("connection.open")[-1]["connection_id"]
        assert ledger(trained)[1][mine][0] is None


async def test_sigterm_closes_connections_with_1001_records_usage_and_exits_0(
    trained, tmp_path, servers
):
    server = own_server(servers, trained, tmp_path)
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, trained.key)
        await ask(ws, request())
        server.process.send_signal(signal.SIGTERM)
        msg = await ws.receive(timeout=15)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1001
    assert server.process.wait(30) == 0
    server.kill()
    conn_id = server.events("connection.open")[-1]["connection_id"]
    _, usage = ledger(trained)
    closed_at, code, reason, predictions, _errors = usage[conn_id]
    assert closed_at is not None and code == 1001 and reason == "server shutdown"
    assert predictions == 1


async def test_revoking_a_key_with_the_cli_closes_its_connections_with_4401(server, trained):
    key = trained.new_key("revoked-live")
    async with aiohttp.ClientSession() as session:
        doomed = await authed(session, server.url, key)
        other = await authed(session, server.url, trained.key)
        assert (await ask(doomed, request()))["type"] == "success"
        run_cli(trained.config, "keys", "revoke", key)
        revoked_at = time.monotonic()
        msg = await doomed.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == 4401
        assert time.monotonic() - revoked_at < 2.0
        assert (await ask(other, request()))["type"] == "success"  # other keys unaffected
        await other.close()


async def test_logs_are_json_events_and_never_contain_a_key(server, trained):
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, trained.key)
        await ask(ws, request(model_type=trained.key))  # a key pasted where it does not belong
        await ask(ws, "bad")
        await ws.close()
        async with session.ws_connect(server.url) as refused:
            await refused.send_str(trained.key + "x")
            await refused.receive(timeout=10)
    for _ in range(50):
        log = server.log()
        events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        if "connection.close" in {e["event"] for e in events}:
            break
        await asyncio.sleep(0.1)
    assert {"connection.open", "connection.close", "request.error", "auth.refused"} <= {
        e["event"] for e in events
    }
    assert trained.key not in log
    assert trained.key[4:20] not in log


async def test_sigterm_does_not_wait_for_a_running_training_job(trained, tmp_path, servers):
    server = own_server(servers, trained, tmp_path, shutdown_timeout=2.0)
    form = aiohttp.FormData()
    big = write_prices(tmp_path / "big.csv", rows=30_000)  # 1,000 trees: minutes of work
    form.add_field("data", big.read_bytes(), filename="prices.csv", content_type="text/csv")
    for name, value in {"strat": "huge", "model": "RandomForest", "type": "class",
                        "target": "direction", "window": "2",
                        "params": '{"n_estimators": 1000}'}.items():
        form.add_field(name, value)
    base = f"http://127.0.0.1:{server.port}/api"
    headers = {"Authorization": f"Bearer {trained.key}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(f"{base}/models", data=form) as response:
            job = await response.json()
            assert response.status == 202, job
        for _ in range(300):  # until its worker is fitting
            async with session.get(f"{base}/jobs/{job['id']}") as response:
                job = await response.json()
            if job["state"] == "running" and job["progress"] > 0.1:
                break
            await asyncio.sleep(0.1)
        assert job["state"] == "running", job
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 0
    assert time.monotonic() - started < 2.0 + 5.0  # the drain, not the 1,000 trees
