"""Malformed frames: each gets one clear error and the connection stays usable."""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.cases import BAD_FRAMES
from tests.helpers import ask, authed, request

pytestmark = pytest.mark.e2e  # real nember processes: `pytest -m e2e`

@pytest.mark.parametrize("frame,expected", [(c[1], c[2]) for c in BAD_FRAMES],
                         ids=[c[0] for c in BAD_FRAMES])
async def test_malformed_frame_gets_one_clear_error(server, trained, frame, expected):
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, trained.key)
        answer = await ask(ws, frame)
        assert set(answer) == {"type", "seq_num", "message"}
        assert answer["type"] == "error" and answer["seq_num"] == 1
        assert answer["message"] == expected
        good = await ask(ws, request())
        assert good["type"] == "success" and good["seq_num"] == 2
        await ws.close()


async def test_binary_frame_after_auth_is_an_error_not_a_close(server, trained):
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, trained.key)
        await ws.send_bytes(request().encode())
        answer = json.loads(await ws.receive_str(timeout=10))
        assert answer == {
            "type": "error",
            "seq_num": 1,
            "message": "Binary frames are not accepted; send each request as a JSON text frame.",
        }
        assert (await ask(ws, request()))["seq_num"] == 2
        await ws.close()


async def test_frame_over_the_maximum_size_closes_with_1009(server, trained):
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, trained.key)
        await ws.send_str(request(padding="x" * 70_000))
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1009


async def test_frame_just_under_the_maximum_is_answered(server, trained):
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, trained.key)
        answer = await ask(ws, request(padding="x" * 60_000))
        assert answer["type"] == "success"
        await ws.close()
