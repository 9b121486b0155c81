"""Malformed frames and the request-error rows of PROTOCOL.md §1.2 and §5, in-process.

The in-process equivalent of tests/e2e/test_bad_input.py and the request-error rows of
tests/e2e/test_protocol.py: every bad frame gets its exact error answer, with its ``seq_num``, and
the connection stays open for the next good request. Limits that need a config of their own
(the rate limit, the connection limit) get an app of their own over the same data folder.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from nember_core.app.nember import Nember
from nember_core.app.server import create_app
from tests.cases import API_KEY_MISMATCH, BAD_FRAMES, NOT_FOUND, NOT_JSON, P
from tests.harness import write_config
from tests.helpers import request

from .conftest import ask, authed, refused

NEW = "New model configuration added, prediction made"
BINARY = "Binary frames are not accepted; send each request as a JSON text frame."
LIMIT_REACHED = {"status": "error", "message": "Connection limit reached for this API key."}
CASES = BAD_FRAMES


def test_the_table_covers_at_least_the_end_to_end_cases():
    assert len(CASES) >= 31
    assert len({case[0] for case in CASES}) == len(CASES)


async def test_every_malformed_frame_gets_its_exact_error_and_the_connection_stays_usable(
    client, prepared
):
    """Each case of the table, then a good request, on one connection (one app for all the
    cases keeps this quick); every mismatch is reported at once, by the case's name."""
    ws = await authed(client, prepared.key)
    wrong = []
    for i, (name, frame, expected) in enumerate(CASES):
        answer = await ask(ws, frame)
        if answer != {"type": "error", "seq_num": 2 * i + 1, "message": expected}:
            wrong.append((name, answer))
        good = await ask(ws, request())
        if (good["type"], good["seq_num"]) != ("success", 2 * i + 2):
            wrong.append((f"{name}, then a good request", good))
    assert wrong == []
    assert not ws.closed


async def test_seq_num_counts_every_frame_successes_and_errors(client, prepared):
    frames = [request(), "not json", request(model_name="Nope"), request(), "[]", request()]
    ws = await authed(client, prepared.key)
    answers = [await ask(ws, frame) for frame in frames]
    assert [a["seq_num"] for a in answers] == [1, 2, 3, 4, 5, 6]
    assert [a["type"] for a in answers] == [
        "success", "error", "error", "success", "error", "success",
    ]


async def test_binary_frames_are_errors_not_closes(client, prepared):
    ws = await authed(client, prepared.key)
    await ws.send_bytes(request().encode())  # a valid request, but binary
    first = json.loads(await ws.receive_str(timeout=5))
    await ws.send_bytes(b"\x00\xff\x10")
    second = json.loads(await ws.receive_str(timeout=5))
    assert first == {"type": "error", "seq_num": 1, "message": BINARY}
    assert second == {"type": "error", "seq_num": 2, "message": BINARY}
    good = await ask(ws, request())
    assert (good["type"], good["seq_num"]) == ("success", 3)


async def test_a_frame_over_the_maximum_size_closes_with_1009(client, prepared):
    ws = await authed(client, prepared.key)
    assert (await ask(ws, request()))["type"] == "success"
    await ws.send_str(request(padding="x" * 70_000))  # the default limit is 65536 bytes
    closing = await ws.receive(timeout=5)
    assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 1009)
    assert ws.close_code == 1009


async def test_a_frame_over_the_maximum_size_is_recorded_as_message_too_big(
    client, prepared, services
):
    owner = await services.accounts.by_email("trader@example.com")
    before = {row.connection_id for row in (await services.usage.report(owner.id)).rows}
    ws = await authed(client, prepared.key)
    await ws.send_str(request(padding="x" * 70_000))
    assert (await ws.receive(timeout=5)).data == 1009
    for _ in range(250):  # until the server has recorded the connection's end
        rows = [row for row in (await services.usage.report(owner.id)).rows
                if row.connection_id not in before and row.closed_at is not None]
        if rows:
            break
        await asyncio.sleep(0.02)
    assert [(row.close_code, row.close_reason) for row in rows] == [(1009, "message too big")]


async def test_a_frame_of_exactly_the_maximum_size_is_answered(client, prepared):
    ws = await authed(client, prepared.key)
    frame = request(padding="")
    frame = request(padding="x" * (65536 - len(frame.encode())))
    assert len(frame.encode()) == 65536
    answer = await ask(ws, frame)
    assert (answer["type"], answer["seq_num"], answer["message"]) == ("success", 1, NEW)


async def test_a_frame_just_under_the_maximum_is_answered(client, prepared):
    ws = await authed(client, prepared.key)
    frame = request(padding="x" * 65_000)
    assert 65_000 < len(frame.encode()) <= 65536
    answer = await ask(ws, frame)
    assert (answer["type"], answer["seq_num"], answer["message"]) == ("success", 1, NEW)


async def test_api_key_in_the_request_must_be_the_connections(client, prepared):
    ws = await authed(client, prepared.key)
    same = await ask(ws, request(api_key=prepared.key))
    assert (same["type"], same["seq_num"]) == ("success", 1)
    # Another valid key of another account is not this connection's key either.
    for seq, wrong in enumerate([prepared.other_key, "nmb_other", None, 5, "",
                                 prepared.key + " "], start=2):
        answer = await ask(ws, request(api_key=wrong))
        assert answer == {"type": "error", "seq_num": seq, "message": API_KEY_MISMATCH}


async def test_request_id_is_echoed_unchanged_even_null(client, prepared):
    ws = await authed(client, prepared.key)
    for seq, request_id in enumerate(["abc", 17, None, {"k": [1, 2]}, "", 1.5], start=1):
        ok = await ask(ws, request(request_id=request_id))
        assert set(ok) == {"type", "seq_num", "message", "prediction", "request_id"}
        assert (ok["type"], ok["seq_num"], ok["request_id"]) == ("success", seq, request_id)
    errors = [
        (request(request_id="r-9", model_type="nope"),
         "Field 'model_type' must be 'class' or 'reg', got 'nope'."),
        (request(request_id=None, strat_name="nope"), NOT_FOUND),
        (request(request_id="r-10", DataPoints=P[:1]),
         "Field 'DataPoints' has 1 data point; this model was trained with 2 (its window)."),
        (json.dumps({"request_id": "r-11"}), "Missing field 'strat_name': expected a non-empty "
         "string."),
    ]
    for seq, (frame, message) in enumerate(errors, start=7):
        answer = await ask(ws, frame)
        sent = json.loads(frame)["request_id"]
        assert answer == {"type": "error", "seq_num": seq, "message": message,
                          "request_id": sent}
    # No request_id: none in the answer (the original shapes), success or error.
    plain = await ask(ws, request())
    assert set(plain) == {"type", "seq_num", "message", "prediction"}
    assert "request_id" not in await ask(ws, request(model_type="nope"))
    # Not an object: nothing to echo.
    assert "request_id" not in await ask(ws, '[{"request_id": "r-12"}]')


@pytest.fixture
async def limited_client(aiohttp_client, prepared, tmp_path):
    """An app of its own over the prepared data folder, with tiny limits."""

    async def start(**server):
        config = write_config(tmp_path, server=server, data_dir=prepared.config.parent / "data")
        return await aiohttp_client(create_app(Nember.load(str(config))))

    return start


async def test_the_rate_limit_answers_an_error_and_keeps_the_connection(limited_client, prepared):
    client = await limited_client(rate_limit={"per_second": 2, "burst": 3})
    warm = await authed(client, prepared.key)  # loads the model, so the burst below is quick
    assert (await ask(warm, request()))["type"] == "success"
    ws = await authed(client, prepared.key)  # a bucket of its own, full
    for _ in range(6):  # at once: the bucket holds 3, and refills 2 per second
        await ws.send_str(request())
    answers = [json.loads(await ws.receive_str(timeout=5)) for _ in range(6)]
    assert [a["seq_num"] for a in answers] == [1, 2, 3, 4, 5, 6]
    assert [a["type"] for a in answers[:3]] == ["success"] * 3
    message = ("Rate limit exceeded: at most 2 requests per second (bursts of 3) on one "
               "connection; slow down.")
    assert answers[3:] == [{"type": "error", "seq_num": n, "message": message} for n in (4, 5, 6)]
    assert (await ask(warm, request()))["type"] == "success"  # the limit is per connection
    await asyncio.sleep(0.6)  # a token is back
    again = await ask(ws, request())
    assert (again["type"], again["seq_num"]) == ("success", 7)
    assert not ws.closed


async def test_a_rate_limited_answer_echoes_the_request_id(limited_client, prepared):
    client = await limited_client(rate_limit={"per_second": 1, "burst": 1})
    ws = await authed(client, prepared.key)
    await ws.send_str(request(request_id="a"))
    await ws.send_str(request(request_id="b"))
    first = json.loads(await ws.receive_str(timeout=5))
    limited = json.loads(await ws.receive_str(timeout=5))
    assert (first["type"], first["request_id"]) == ("success", "a")
    assert limited["message"].startswith("Rate limit exceeded: at most 1 requests per second")
    assert limited.get("request_id") == "b"


async def test_the_rate_limit_counts_bad_frames_too(limited_client, prepared):
    client = await limited_client(rate_limit={"per_second": 1, "burst": 2})
    ws = await authed(client, prepared.key)
    for frame in ("junk", "[]", request()):
        await ws.send_str(frame)
    answers = [json.loads(await ws.receive_str(timeout=5)) for _ in range(3)]
    assert answers[0]["message"] == NOT_JSON
    assert answers[1]["message"] == "The request must be a JSON object, got an array."
    assert answers[2] == {"type": "error", "seq_num": 3, "message": (
        "Rate limit exceeded: at most 1 requests per second (bursts of 2) on one connection; "
        "slow down.")}


async def test_the_connection_limit_per_account(limited_client, prepared):
    client = await limited_client(max_connections_per_account=2)
    one = await authed(client, prepared.other_key)
    two = await authed(client, prepared.other_key)
    assert await refused(client, prepared.other_key) == (LIMIT_REACHED, 1008)
    # The limit is the account's: the first account still connects.
    mine = await authed(client, prepared.key)
    assert (await ask(two, request()))["message"] == NOT_FOUND  # still open and served
    await one.close()
    for _ in range(100):  # the slot frees once the server has recorded the close
        ws = await client.ws_connect("/ws")
        await ws.send_str(prepared.other_key)
        answer = json.loads(await ws.receive_str(timeout=5))
        if answer["status"] == "success":
            break
        await ws.receive(timeout=5)
        await asyncio.sleep(0.02)
    assert answer == {"status": "success", "message": "Valid API key."}
    await ws.close()
    await two.close()
    await mine.close()
