"""PROTOCOL.md §1 and §2 in-process: authentication, answers, errors, closing, charges."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from nember_core.services import TrainingRequest
from tests.helpers import REQUEST, request

from .conftest import VALID_KEY, ask, authed, refused

NEW = "New model configuration added, prediction made"
EXISTING = "Existing model data used for prediction"
NOT_FOUND = "Model configuration not found in the backend."
INVALID = {"status": "error", "message": "Invalid API key."}


async def test_answers_in_order_with_seq_num_new_then_existing(client, prepared):
    ws = await authed(client, prepared.key)
    first = await ask(ws, request())
    second = await ask(ws, request(model_type="reg"))
    third = await ask(ws, request())
    assert (first["type"], first["seq_num"], first["message"]) == ("success", 1, NEW)
    assert first["prediction"] in ("up", "down")  # the training data's own labels
    assert (second["seq_num"], second["message"]) == (2, NEW)
    assert isinstance(second["prediction"], float)
    assert (third["seq_num"], third["message"]) == (3, EXISTING)
    assert set(first) == {"type", "seq_num", "message", "prediction"}  # the original shape


async def test_a_burst_of_short_and_long_answers_arrives_whole_and_in_order(client, prepared):
    """Short answers are framed by the gateway itself, longer ones by aiohttp: a bot that
    sends a burst before reading gets every answer, whole, in order."""
    ws = await authed(client, prepared.key)
    await ask(ws, request())  # the model loaded: the rest are answered at once
    long_id = "order-" + "x" * 120  # echoed in the answer: over 125 bytes
    ids = [long_id + str(n) if n % 3 == 0 else None for n in range(300)]
    for request_id in ids:
        await ws.send_str(request() if request_id is None else request(request_id=request_id))
    for seq, request_id in enumerate(ids, start=2):
        answer = json.loads((await ws.receive(timeout=10)).data)
        assert (answer["type"], answer["seq_num"], answer["message"]) == (
            "success", seq, EXISTING)
        assert answer.get("request_id") == request_id
    await ws.close()


@pytest.mark.parametrize(
    "frame",
    ["nmb_unknownkeyunknownkeyunknownkeyunknown00", "", "   ", "nmb_" + "x" * 5000, "hello",
     b"binary"],
    ids=["unknown", "empty", "blank", "over-long", "not-a-key", "binary"],
)
async def test_bad_keys_are_refused_with_1008(client, frame):
    assert await refused(client, frame) == (INVALID, 1008)


async def test_errors_answer_keep_the_connection_and_count_seq(client, prepared):
    ws = await authed(client, prepared.key)
    missing = await ask(ws, request(strat_name="nope"))
    broken = await ask(ws, "{not json")
    echoed = await ask(ws, {**REQUEST, "request_id": "r-7"})
    assert missing == {"type": "error", "seq_num": 1, "message": NOT_FOUND}
    assert broken["type"] == "error" and broken["seq_num"] == 2
    assert "not valid JSON" in broken["message"]
    assert (echoed["type"], echoed["seq_num"], echoed["request_id"]) == ("success", 3, "r-7")
    assert not ws.closed


async def test_another_accounts_model_is_not_found(client, prepared):
    ws = await authed(client, prepared.other_key)
    assert (await ask(ws, request()))["message"] == NOT_FOUND


async def test_a_retrained_model_reaches_a_live_connection(client, prepared, services):
    ws = await authed(client, prepared.key)
    assert (await ask(ws, request(strat_name="retrained")))["message"] == NOT_FOUND
    owner = await services.accounts.by_email("trader@example.com")
    await services.models.train(owner.id, TrainingRequest(
        strat="retrained", family="DecisionTree", model_type="class", data=prepared.data,
        target="direction", window=2, features=["point1", "point2"],
    ))
    for _ in range(100):  # the refresh interval is 0.05 s here
        answer = await ask(ws, request(strat_name="retrained"))
        if answer["type"] == "success":
            break
        await asyncio.sleep(0.05)
    assert answer["message"] == NEW


async def test_a_bot_asking_the_same_model_again_and_again_gets_the_retrained_one(
        client, prepared, services):
    owner = await services.accounts.by_email("trader@example.com")

    async def train() -> None:
        await services.models.train(owner.id, TrainingRequest(
            strat="again", family="DecisionTree", model_type="class", data=prepared.data,
            target="direction", window=2, features=["point1", "point2"]))

    await train()
    ws = await authed(client, prepared.key)
    for _ in range(100):
        if (await ask(ws, request(strat_name="again")))["type"] == "success":
            break
        await asyncio.sleep(0.05)
    # The same model frame after frame: the connection's shortcut, until the retrain.
    assert [(await ask(ws, request(strat_name="again")))["message"] for _ in range(3)] == [
        EXISTING] * 3
    await train()
    for _ in range(100):  # the refresh interval is 0.05 s here
        answer = await ask(ws, request(strat_name="again"))
        if answer["message"] == NEW:
            break
        await asyncio.sleep(0.05)
    assert answer["message"] == NEW
    assert (await ask(ws, request(strat_name="again")))["message"] == EXISTING
    await ws.close()


async def test_closing_through_the_api_sends_4000(client, prepared):
    ws = await authed(client, prepared.key)
    headers = {"Authorization": f"Bearer {prepared.key}"}
    listed = await (await client.get("/api/connections", headers=headers)).json()
    (conn,) = listed["items"]
    response = await client.delete(f"/api/connections/{conn['id']}", headers=headers)
    assert response.status == 200
    closing = await ws.receive(timeout=5)
    assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 4000)


async def test_revoking_the_key_closes_its_sockets_with_4401(client, services):
    owner = await services.accounts.by_email("trader@example.com")
    doomed = await services.keys.create(owner.id, "doomed")
    ws = await authed(client, doomed.secret)
    await services.keys.revoke(doomed.key.id)  # as the CLI does, from "another process"
    closing = await ws.receive(timeout=5)
    assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 4401)
    assert await refused(client, doomed.secret) == (INVALID, 1008)


async def test_every_accepted_connection_is_charged_once_and_refused_ones_never(
    client, prepared, services
):
    owner = await services.accounts.by_email("other@example.com")
    before = await services.usage.report(owner.id)
    for _ in range(3):
        ws = await authed(client, prepared.other_key)
        await ws.close()
    await refused(client, "nmb_wrong")
    after = await services.usage.report(owner.id)
    assert after.connections == before.connections + 3
    assert after.amount - before.amount == 3 * services.config.billing.price


async def test_shutdown_closes_live_connections_with_1001(client, prepared):
    ws = await authed(client, prepared.key)
    assert json.loads(json.dumps(VALID_KEY))  # authenticated above
    await client.server.close()
    closing = await ws.receive(timeout=5)
    assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 1001)


UNAVAILABLE = {"status": "error", "message": "Service temporarily unavailable, try again later."}


@pytest.mark.parametrize("store,method", [("billing", "charge"), ("key_store", "authenticate"),
                                          ("registry", "add")])
async def test_a_failing_store_refuses_with_1013_uncharged_and_recovers(
    client, prepared, services, monkeypatch, store, method
):
    from nember_core.app.server import GATEWAY

    stores = client.server.app[GATEWAY].stores
    owner = await services.accounts.by_email("other@example.com")
    before = (await services.usage.report(owner.id)).connections

    async def down(*args, **kwargs):
        raise OSError("disk I/O error")

    monkeypatch.setattr(getattr(stores, store), method, down)
    assert await refused(client, prepared.other_key) == (UNAVAILABLE, 1013)
    headers = {"Authorization": f"Bearer {prepared.other_key}"}
    monkeypatch.undo()  # the store is back: the next connection is served at once
    listed = await (await client.get("/api/connections", headers=headers)).json()
    assert listed["items"] == []  # the refused one is not listed live
    assert (await services.usage.report(owner.id)).connections == before  # nor charged
    ws = await authed(client, prepared.other_key)
    assert (await ask(ws, request()))["message"] == NOT_FOUND  # served (this account has none)
