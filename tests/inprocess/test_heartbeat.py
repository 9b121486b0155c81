"""The server's heartbeat (PROTOCOL.md §1.3): a quiet bot that answers pings stays connected
however long it waits; one that doesn't is dropped as a lost connection; a busy one is never
pinged; pings are answered, before authentication too."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from nember_core.app.nember import Nember
from nember_core.app.server import create_app
from tests.harness import write_config
from tests.helpers import request

from .conftest import VALID_KEY, ask

HEARTBEAT = 0.3


@pytest.fixture
async def quick(aiohttp_client, prepared, tmp_path):
    """A server on the prepared data with a heartbeat of 0.3 s."""
    data_dir = Nember.load(str(prepared.config)).config.data_dir
    config = write_config(tmp_path, data_dir=data_dir, server={"heartbeat": HEARTBEAT})
    return await aiohttp_client(create_app(Nember.load(str(config))))


async def _connect(client, key: str, autoping: bool):
    ws = await client.ws_connect("/ws", autoping=autoping)
    await ws.send_str(key)
    answer = await ws.receive(timeout=5)
    assert answer.json() == VALID_KEY
    return ws


async def test_an_idle_bot_that_answers_pings_stays_connected(quick, prepared):
    ws = await _connect(quick, prepared.key, autoping=True)
    # Waiting for a frame: the client answers the server's pings meanwhile (several).
    reading = asyncio.create_task(ws.receive())
    await asyncio.sleep(HEARTBEAT * 8)
    assert not reading.done()  # still connected: nothing came but pings
    await ws.send_str(request())
    answer = await asyncio.wait_for(reading, 5)
    assert json.loads(answer.data)["type"] == "success"
    await ws.close()


async def test_a_bot_that_ignores_pings_is_pinged_then_dropped(quick, prepared, services):
    account = await services.accounts.by_email("trader@example.com")
    before = {row.connection_id for row in (await services.usage.report(account.id)).rows}
    ws = await _connect(quick, prepared.key, autoping=False)
    started = time.monotonic()
    first = await ws.receive(timeout=5)
    assert first.type == aiohttp.WSMsgType.PING
    pinged_after = time.monotonic() - started
    ended = await ws.receive(timeout=5)  # no pong: the server hangs up, no close frame
    assert ended.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    assert HEARTBEAT * 0.8 <= pinged_after <= HEARTBEAT * 3
    for _ in range(50):
        rows = [row for row in (await services.usage.report(account.id)).rows
                if row.connection_id not in before]
        if rows and rows[0].closed_at is not None:
            break
        await asyncio.sleep(0.1)
    (row,) = rows
    assert row.close_code == 1006 and row.close_reason == "connection lost"


async def test_a_bot_asking_all_the_time_is_never_pinged(quick, prepared):
    ws = await _connect(quick, prepared.key, autoping=False)
    until = time.monotonic() + HEARTBEAT * 6
    while time.monotonic() < until:  # every answer must be the answer, never a ping
        assert (await ask(ws, request()))["type"] == "success"
        await asyncio.sleep(HEARTBEAT / 10)
    await ws.close()


async def test_pings_are_answered_before_and_after_authentication(quick, prepared):
    ws = await quick.ws_connect("/ws", autoping=False)
    await ws.ping(b"before")
    pong = await ws.receive(timeout=5)
    assert (pong.type, pong.data) == (aiohttp.WSMsgType.PONG, b"before")
    await ws.send_str(prepared.key)
    assert (await ws.receive(timeout=5)).json() == VALID_KEY
    await ws.ping(b"after")
    pong = await ws.receive(timeout=5)
    assert (pong.type, pong.data) == (aiohttp.WSMsgType.PONG, b"after")
    assert (await ask(ws, request()))["seq_num"] == 1
    await ws.close()
