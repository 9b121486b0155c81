"""AsyncClient against the real application, in-process: authentication, typed answers,
pipelining, error answers, closes and reconnection."""

from __future__ import annotations

import asyncio

import pytest
from nember_client import (
    AsyncClient,
    AuthenticationError,
    ConnectError,
    ConnectionClosedError,
    ConnectionLimitError,
    ModelNotFoundError,
    ModelUnavailableError,
    NemberError,
    Prediction,
    PredictionError,
    RateLimitError,
)
from nember_client.backoff import full_jitter

from nember_core.app.nember import Nember
from nember_core.app.server import create_app
from nember_core.metrics import FIGURES
from nember_core.services import TrainingRequest
from tests.harness import write_config

from .conftest import FAMILY, INSIDE, STRAT, eventually, ws_url

NOT_FOUND = "Model configuration not found in the backend."


# --- authentication ---------------------------------------------------------------------

async def test_a_valid_key_connects_and_close_ends_the_client(url, prepared):
    client = AsyncClient(url, prepared.key)
    assert not client.connected
    async with client:
        assert client.connected
        assert (await client.predict(STRAT, FAMILY, "class", INSIDE)).seq_num == 1
    assert not client.connected
    with pytest.raises(ConnectionClosedError) as closed:
        await client.predict(STRAT, FAMILY, "class", INSIDE)
    assert (closed.value.code, closed.value.reason) == (1000, "closed by the client")


async def test_a_refused_key_raises_authentication_error_and_is_never_tried_again(url):
    before = FIGURES.auth["invalid_key"]
    client = AsyncClient(url, "nmb_not-a-key", max_backoff=0.05)
    with pytest.raises(AuthenticationError) as refused:
        await client.connect()
    assert refused.value.message == "Invalid API key."
    with pytest.raises(AuthenticationError):  # at once, without asking the server again
        await client.connect()
    with pytest.raises(AuthenticationError):
        await client.predict(STRAT, FAMILY, "class", INSIDE)
    await asyncio.sleep(0.3)  # many backoffs of 0.05 s: no attempt in the background either
    assert FIGURES.auth["invalid_key"] == before + 1
    assert not client.connected


async def test_an_account_at_its_connection_limit_raises_connection_limit_error(
        aiohttp_client, prepared, tmp_path):
    config = write_config(tmp_path, server={"max_connections_per_account": 1},
                          data_dir=prepared.config.parent / "data")
    url = ws_url(await aiohttp_client(create_app(Nember.load(str(config)))))
    async with AsyncClient(url, prepared.key):
        with pytest.raises(ConnectionLimitError) as refused:
            await AsyncClient(url, prepared.key).connect()
    assert refused.value.message == "Connection limit reached for this API key."
    async with AsyncClient(url, prepared.key) as again:  # the first one left: room again
        assert again.connected


async def test_nothing_listening_raises_connect_error_naming_the_url(prepared):
    with pytest.raises(ConnectError) as failed:
        await AsyncClient("ws://127.0.0.1:9/ws", prepared.key, open_timeout=5).connect()
    assert str(failed.value).startswith("Cannot connect to ws://127.0.0.1:9/ws: ")
    assert "\n" not in str(failed.value)


async def test_predict_before_connect_says_to_connect_first(url, prepared):
    with pytest.raises(NemberError, match="connect"):
        await AsyncClient(url, prepared.key).predict(STRAT, FAMILY, "class", INSIDE)


# --- answers ----------------------------------------------------------------------------

async def test_a_prediction_is_a_typed_record(sdk):
    first = await sdk.predict(STRAT, FAMILY, "class", INSIDE)
    assert isinstance(first, Prediction)
    assert first.prediction in ("up", "down")  # the training data's labels
    assert (first.seq_num, first.new_model) == (1, True)
    assert (first.probabilities, first.model, first.in_distribution) == (None, None, None)
    assert isinstance(first.request_id, int)  # generated
    again = await sdk.predict(STRAT, FAMILY, "class", INSIDE, request_id="mine")
    assert (again.seq_num, again.new_model, again.request_id) == (2, False, "mine")
    assert again.prediction == first.prediction
    regression = await sdk.predict(STRAT, FAMILY, "reg", INSIDE)
    assert isinstance(regression.prediction, float)
    assert (regression.seq_num, regression.new_model) == (3, True)
    with pytest.raises(AttributeError):  # frozen
        again.prediction = "up"  # type: ignore[misc]


async def test_200_pipelined_requests_each_get_their_own_answer(sdk):
    windows = [[{"point1": (i % 7 - 3) * 0.4, "point2": (i % 5 - 2) * 0.5},
                {"point1": (i % 3 - 1) * 0.6, "point2": (i % 4 - 1.5) * 0.3}]
               for i in range(20)]
    kinds = ("class", "reg")
    # What each (window, type) answers, asked one at a time.
    expected = {(w, kind): (await sdk.predict(STRAT, FAMILY, kind, windows[w])).prediction
                for w in range(20) for kind in kinds}
    assert len({expected[w, "reg"] for w in range(20)}) > 5  # the windows tell answers apart
    asked = len(expected)

    def strat(i: int) -> str:
        return "no_such_strategy" if i % 25 == 7 else STRAT

    ids = [f"req-{i}" if i % 2 == 0 else None for i in range(200)]
    results = await asyncio.gather(
        *(sdk.predict(strat(i), FAMILY, kinds[i % 2], windows[i % 20], request_id=ids[i])
          for i in range(200)),
        return_exceptions=True)

    generated = []
    for i, result in enumerate(results):
        if strat(i) != STRAT:
            assert isinstance(result, ModelNotFoundError), (i, result)
            assert result.message == NOT_FOUND
        else:
            assert isinstance(result, Prediction), (i, result)
            assert result.prediction == expected[i % 20, kinds[i % 2]], i
        # Sent in call order, so the server numbered them in that order, after those above.
        assert result.seq_num == asked + 1 + i
        if ids[i] is None:
            generated.append(result.request_id)
        else:
            assert result.request_id == ids[i]
    assert len(set(generated)) == 100 and all(isinstance(g, int) for g in generated)
    assert sdk.connected


# --- error answers ----------------------------------------------------------------------

async def test_error_answers_raise_the_right_exception_and_the_connection_stays(sdk):
    with pytest.raises(ModelNotFoundError) as missing:
        await sdk.predict("no_such_strategy", FAMILY, "class", INSIDE, request_id=7)
    assert (missing.value.message, missing.value.seq_num, missing.value.request_id) == (
        NOT_FOUND, 1, 7)
    with pytest.raises(PredictionError) as too_many:
        await sdk.predict(STRAT, FAMILY, "class", INSIDE + INSIDE[:1])
    assert type(too_many.value) is PredictionError
    assert too_many.value.message == (
        "Field 'DataPoints' has 3 data points; this model was trained with 2 (its window).")
    assert too_many.value.seq_num == 2
    with pytest.raises(PredictionError) as unexpected:
        await sdk.predict(STRAT, FAMILY, "class", [{**INSIDE[0], "point3": 1}, INSIDE[1]])
    assert unexpected.value.message == ("DataPoints[0] has unexpected feature 'point3'; "
                                        "the model expects 'point1', 'point2'.")
    with pytest.raises(PredictionError) as bad_type:
        await sdk.predict(STRAT, FAMILY, "classification", INSIDE)
    assert bad_type.value.message == (
        "Field 'model_type' must be 'class' or 'reg', got 'classification'.")
    answer = await sdk.predict(STRAT, FAMILY, "class", INSIDE)
    assert answer.seq_num == 5 and sdk.connected


async def test_requests_the_client_cannot_send_are_refused_before_sending(sdk):
    with pytest.raises(ValueError, match="finite numbers"):
        await sdk.predict(STRAT, FAMILY, "reg", [{"point1": float("nan"), "point2": 0}] * 2)
    with pytest.raises(TypeError, match="sequence of data points"):
        await sdk.predict(STRAT, FAMILY, "reg", INSIDE[0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="request_id"):
        await sdk.predict(STRAT, FAMILY, "reg", INSIDE, request_id=1.5)  # type: ignore[arg-type]
    assert (await sdk.predict(STRAT, FAMILY, "reg", INSIDE)).seq_num == 1  # nothing was sent


async def test_a_model_that_fails_to_load_raises_model_unavailable_error(
        sdk, services, prepared):
    account = (await services.accounts.by_email("trader@example.com")).id
    await services.models.train(account, TrainingRequest(
        strat="broken", family=FAMILY, model_type="reg", data=prepared.data, target="move",
        window=1, features=["point1"]))
    (meta,) = [m for m in (prepared.config.parent / "data").rglob("meta.json")
               if '"strat": "broken"' in m.read_text()]
    (meta.parent / "model.bin").write_bytes(b"damaged")
    with pytest.raises(ModelUnavailableError) as unavailable:
        await sdk.predict("broken", FAMILY, "reg", [{"point1": 0.1}], request_id="b")
    assert unavailable.value.message == "The model could not be loaded; try again later."
    assert unavailable.value.request_id == "b"


async def test_over_the_rate_limit_raises_rate_limit_error(aiohttp_client, prepared, tmp_path):
    config = write_config(tmp_path, server={"rate_limit": {"per_second": 5, "burst": 2}},
                          data_dir=prepared.config.parent / "data")
    url = ws_url(await aiohttp_client(create_app(Nember.load(str(config)))))
    async with AsyncClient(url, prepared.key) as client:
        results = await asyncio.gather(
            *(client.predict(STRAT, FAMILY, "class", INSIDE, request_id=i) for i in range(5)),
            return_exceptions=True)
        assert [type(r) for r in results[:2]] == [Prediction, Prediction]
        for i, limited in enumerate(results[2:], start=2):
            assert isinstance(limited, RateLimitError)
            assert limited.message == ("Rate limit exceeded: at most 5 requests per second "
                                       "(bursts of 2) on one connection; slow down.")
            assert (limited.request_id, limited.seq_num) == (i, i + 1)
        await asyncio.sleep(0.25)  # a token back
        assert (await client.predict(STRAT, FAMILY, "class", INSIDE)).seq_num == 6


# --- closes and reconnection ------------------------------------------------------------

async def test_a_close_by_the_owner_is_final(sdk, client, prepared):
    headers = {"Authorization": f"Bearer {prepared.key}"}
    async with client.get("/api/connections", headers=headers) as response:
        (conn,) = (await response.json())["items"]
    async with client.delete(f"/api/connections/{conn['id']}", headers=headers) as response:
        assert response.status == 200
    await eventually(lambda: not sdk.connected, what="the close")
    with pytest.raises(ConnectionClosedError) as closed:
        await sdk.predict(STRAT, FAMILY, "class", INSIDE)
    assert (closed.value.code, closed.value.reason) == (4000, "closed by owner")
    await asyncio.sleep(1.0)  # two max_backoffs: a reconnection would have happened
    async with client.get("/api/connections", headers=headers) as response:
        assert (await response.json())["items"] == []
    assert not sdk.connected


async def test_reconnects_after_the_server_restarts_and_waiting_requests_get_through(
        loopback, prepared):
    reconnected = []

    async def on_reconnect():  # a coroutine function is awaited
        reconnected.append(loopback.port)

    async with AsyncClient(loopback.url, prepared.key, max_backoff=0.2, request_timeout=5,
                           on_reconnect=on_reconnect) as client:
        before = await client.predict(STRAT, FAMILY, "class", INSIDE)
        await loopback.stop()  # a drain: every connection closed with 1001
        await eventually(lambda: not client.connected, what="the drop")
        waiting = asyncio.ensure_future(client.predict(STRAT, FAMILY, "class", INSIDE))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # it waits for the connection, for request_timeout at most
        await loopback.start()
        after = await waiting
        assert client.connected and reconnected == [loopback.port]
        # A new connection: numbered from 1 again, the model new to it.
        assert (after.seq_num, after.new_model, after.prediction) == (
            1, True, before.prediction)


def test_backoff_is_exponential_with_full_jitter_and_capped():
    assert full_jitter(0, cap=30, rand=lambda: 1.0) == 0.5
    assert full_jitter(3, cap=30, rand=lambda: 1.0) == 4.0
    assert full_jitter(10, cap=30, rand=lambda: 1.0) == 30.0
    assert full_jitter(10_000, cap=30, rand=lambda: 0.5) == 15.0
    assert full_jitter(4, cap=30, rand=lambda: 0.0) == 0.0
    assert all(0 <= full_jitter(5, cap=30) <= 16 for _ in range(100))
