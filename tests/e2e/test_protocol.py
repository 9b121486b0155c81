"""PROTOCOL.md §1, row by row, over a real server and real websocket clients."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.harness import write_config
from tests.helpers import REQUEST, ask, authed, request

pytestmark = pytest.mark.e2e  # real nember processes: `pytest -m e2e`

NEW = "New model configuration added, prediction made"
EXISTING = "Existing model data used for prediction"
NOT_FOUND = "Model configuration not found in the backend."
INVALID = {"status": "error", "message": "Invalid API key."}


async def refused(url: str, first_frame, binary: bool = False) -> tuple[dict, int]:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as ws:
            if binary:
                await ws.send_bytes(first_frame)
            else:
                await ws.send_str(first_frame)
            answer = json.loads(await ws.receive_str(timeout=10))
            closing = await ws.receive(timeout=10)
            assert closing.type == aiohttp.WSMsgType.CLOSE
            return answer, ws.close_code


async def test_valid_key_is_accepted_and_connection_stays_open(server, trained):
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, trained.key)
        answer = await ask(ws, request())
        assert answer["type"] == "success"
        assert not ws.closed
        await ws.close()


async def test_surrounding_white_space_around_the_key_is_ignored(server, trained):
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, f"  {trained.key}\n")
        await ws.close()


@pytest.mark.parametrize(
    "frame",
    ["nmb_unknownkeyunknownkeyunknownkeyunknown00", "", "   ", "nmb_" + "x" * 5000, "hello"],
    ids=["unknown", "empty", "blank", "over-long", "not-a-key"],
)
async def test_bad_keys_are_refused_with_1008(server, frame):
    answer, code = await refused(server.url, frame)
    assert answer == INVALID
    assert code == 1008


async def test_binary_first_frame_is_refused(server, trained):
    answer, code = await refused(server.url, trained.key.encode(), binary=True)
    assert answer == INVALID
    assert code == 1008


async def test_revoked_key_is_refused(server, trained):
    key = trained.new_key("to-revoke")
    from tests.harness import run_cli

    run_cli(trained.config, "keys", "revoke", key)
    answer, code = await refused(server.url, key)
    assert answer == INVALID
    assert code == 1008


async def test_prediction_answers_new_then_existing_with_exact_keys(server, trained):
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, trained.key)
        first = await ask(ws, request())
        assert set(first) == {"type", "seq_num", "message", "prediction"}
        assert first["type"] == "success" and first["seq_num"] == 1
        assert first["message"] == NEW
        assert first["prediction"] in ("up", "down")
        second = await ask(ws, request())
        assert second == {**first, "seq_num": 2, "message": EXISTING}
        reg = await ask(ws, request(model_type="reg"))
        assert reg["message"] == NEW and isinstance(reg["prediction"], float)
        assert (await ask(ws, request(model_type="reg")))["message"] == EXISTING
        await ws.close()


async def test_new_is_per_connection(server, trained):
    async with aiohttp.ClientSession() as session:
        one = await authed(session, server.url, trained.key)
        two = await authed(session, server.url, trained.key)
        assert (await ask(one, request()))["message"] == NEW
        assert (await ask(one, request()))["message"] == EXISTING
        assert (await ask(two, request()))["message"] == NEW
        assert (await ask(one, request()))["message"] == EXISTING
        await one.close()
        await two.close()


async def test_unknown_model_is_not_found_and_connection_stays_usable(server, trained):
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, trained.key)
        for changes in (
            {"strat_name": "no_such_strategy"},
            {"model_name": "XGBoost"},  # installed family, never trained here
            {"model_name": "NoSuchFamily"},
        ):
            answer = await ask(ws, request(**changes))
            assert answer == {"type": "error", "seq_num": answer["seq_num"], "message": NOT_FOUND}
        assert (await ask(ws, request()))["type"] == "success"
        await ws.close()


async def test_seq_num_counts_every_frame_successes_and_errors(server, trained):
    frames = [request(), "not json", request(model_name="Nope"), request(), "[]", request()]
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, trained.key)
        answers = [await ask(ws, frame) for frame in frames]
        assert [a["seq_num"] for a in answers] == [1, 2, 3, 4, 5, 6]
        assert [a["type"] for a in answers] == [
            "success", "error", "error", "success", "error", "success",
        ]
        await ws.close()


async def test_request_id_is_echoed_unchanged(server, trained):
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, trained.key)
        for request_id in ["abc", 17, None, {"k": [1, 2]}]:
            ok = await ask(ws, request(request_id=request_id))
            assert ok["request_id"] == request_id and ok["type"] == "success"
        bad = await ask(ws, request(request_id="r-9", model_type="nope"))
        assert bad["request_id"] == "r-9" and bad["type"] == "error"
        await ws.close()


async def test_api_key_in_request_must_match_the_connection(server, trained):
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, trained.key)
        assert (await ask(ws, request(api_key=trained.key)))["type"] == "success"
        for wrong in ["nmb_other", None, 5]:
            answer = await ask(ws, request(api_key=wrong))
            assert answer["type"] == "error"
            assert answer["message"] == (
                "Field 'api_key' does not match the API key this connection authenticated with."
            )
        await ws.close()


async def test_retraining_makes_new_again_on_live_connections(server, trained):
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, trained.key)
        assert (await ask(ws, request(strat_name="retrain")))["message"] == NOT_FOUND
        trained.train("DecisionTree", "class", "retrain")
        answer = await _wait_for(
            ws, request(strat_name="retrain"), lambda a: a["type"] == "success"
        )
        assert answer["message"] == NEW
        assert (await ask(ws, request(strat_name="retrain")))["message"] == EXISTING
        trained.train("DecisionTree", "class", "retrain", "--param", "max_depth=2")
        answer = await _wait_for(ws, request(strat_name="retrain"), lambda a: a["message"] == NEW)
        assert (await ask(ws, request(strat_name="retrain")))["message"] == EXISTING
        await ws.close()


async def _wait_for(ws, frame, done, timeout: float = 5.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        answer = await ask(ws, frame)
        if done(answer) or loop.time() > deadline:
            assert done(answer), answer
            return answer
        await asyncio.sleep(0.1)


async def test_seed_request_example_works_as_written(server, trained):
    """The seed's request, byte for byte but for the key."""
    seed = json.dumps(
        {**REQUEST, "api_key": trained.key}, indent=4
    )
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, trained.key)
        answer = await ask(ws, seed)
        assert answer["type"] == "success"
        await ws.close()


async def test_connection_limit_per_account(trained, tmp_path, servers):
    # The workspace's data (so the key exists) on a server of its own with a low limit.
    config = write_config(tmp_path, server={"max_connections_per_account": 2},
                          data_dir=trained.data_dir)
    server = servers(config)
    async with aiohttp.ClientSession() as session:
        one = await authed(session, server.url, trained.key)
        two = await authed(session, server.url, trained.key)
        answer, code = await refused(server.url, trained.key)
        assert answer == {
            "status": "error",
            "message": "Connection limit reached for this API key.",
        }
        assert code == 1008
        await one.close()
        await asyncio.sleep(0.2)
        three = await authed(session, server.url, trained.key)  # a slot is free again
        await two.close()
        await three.close()


async def test_no_key_within_the_auth_timeout_closes_with_1008(trained, tmp_path, servers):
    config = write_config(tmp_path, server={"auth_timeout": 0.5})
    server = servers(config)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.url) as ws:
            msg = await ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 1008


async def test_rate_limit_answers_an_error_and_keeps_the_connection(trained, tmp_path, servers):
    config = write_config(tmp_path, server={"rate_limit": {"per_second": 2, "burst": 3}},
                          data_dir=trained.data_dir)
    server = servers(config)
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, trained.key)
        assert (await ask(ws, request()))["type"] == "success"  # loads the model
        await asyncio.sleep(1.6)  # the bucket refills to its burst of 3
        for frame in [request()] * 5:
            await ws.send_str(frame)
        answers = [json.loads(await ws.receive_str(timeout=10)) for _ in range(5)]
        assert [a["type"] for a in answers[:3]] == ["success"] * 3
        assert answers[3]["type"] == "error"
        assert answers[3]["message"].startswith("Rate limit exceeded: at most 2 requests")
        assert [a["seq_num"] for a in answers] == [2, 3, 4, 5, 6]
        await asyncio.sleep(0.6)
        assert (await ask(ws, request()))["type"] == "success"
        await ws.close()


async def test_a_peer_that_ignores_pings_is_dropped(trained, tmp_path, servers):
    config = write_config(tmp_path, server={"heartbeat": 0.5}, data_dir=trained.data_dir)
    server = servers(config)
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, trained.key, autoping=False)
        ended = None
        for _ in range(20):  # pings arrive and go unanswered; then the server drops us
            msg = await ws.receive(timeout=10)
            if msg.type != aiohttp.WSMsgType.PING:
                ended = msg.type
                break
        assert ended in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                         aiohttp.WSMsgType.ERROR)
    await asyncio.sleep(0.5)
    closed = server.events("connection.close")
    assert closed and closed[-1]["close_reason"] == "connection lost"


async def test_serves_the_same_on_uvloop(trained, tmp_path, servers):
    config = write_config(tmp_path, server={"event_loop": "uvloop"}, data_dir=trained.data_dir)
    server = servers(config)
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, trained.key)
        assert (await ask(ws, request()))["message"] == NEW
        assert (await ask(ws, "junk"))["seq_num"] == 2
        await ws.close()
    assert server.terminate() == 0
