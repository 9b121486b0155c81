"""Property-based: whatever a bot sends, every frame gets exactly one well-formed answer with
the right ``seq_num``, and the session never raises. Hypothesis generates the frames: any
text, any JSON value, requests with any field replaced by any value, binary frames."""

from __future__ import annotations

import asyncio
import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nember_core.app.nember import Nember
from nember_core.records import LiveConnection, utcnow
from nember_core.serving.model_cache import ModelCache
from nember_core.serving.session import PredictionSession, RateLimiter
from tests.helpers import REQUEST

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
# A request with some of its fields replaced by anything, some dropped, some added.
REQUESTS = st.builds(
    lambda replaced, dropped, extra: {
        **{k: v for k, v in REQUEST.items() if k not in dropped}, **replaced, **extra},
    st.dictionaries(st.sampled_from([*REQUEST, "request_id", "api_key"]), JSON, max_size=3),
    st.sets(st.sampled_from(list(REQUEST))),
    st.dictionaries(st.text(max_size=8), JSON, max_size=2),
)
POINTS = st.lists(st.dictionaries(st.sampled_from(["point1", "point2", "x"]),
                                  st.integers() | st.floats() | st.text(max_size=3) | st.none(),
                                  max_size=3), max_size=4)
FRAMES = st.one_of(
    st.text(max_size=300),
    JSON.map(json.dumps),
    REQUESTS.map(json.dumps),
    POINTS.map(lambda points: json.dumps({**REQUEST, "DataPoints": points})),
    st.integers(1, 5000).map(lambda depth: "[" * depth + "]" * depth),
    st.binary(max_size=100),
)


@pytest.fixture(scope="module")
def serving(prepared):
    """A model cache over the prepared stores, on an event loop of its own."""
    loop = asyncio.new_event_loop()
    nember = Nember.load(str(prepared.config))
    stores = loop.run_until_complete(nember.open())
    account = loop.run_until_complete(stores.key_store.authenticate(prepared.key))
    cache = ModelCache(stores.model_store, nember.families, batch_above_us=None)
    yield loop, cache, account.account_id, prepared.key
    loop.run_until_complete(stores.close())
    loop.close()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(FRAMES, min_size=1, max_size=6))
def test_every_frame_gets_exactly_one_well_formed_answer(serving, frames):
    loop, cache, account_id, key = serving
    conn = LiveConnection(id="conn_prop", account_id=account_id, key_id="key", key_name="k",
                          remote="", node="", opened_at=utcnow())
    session = PredictionSession(conn, key, cache, RateLimiter(1e9, 10**9))
    for seq, frame in enumerate(frames, start=1):
        is_text = isinstance(frame, str)
        out = session.answer(frame, is_text)
        if type(out) is not bytes:  # a model to look up first
            out = loop.run_until_complete(session.complete(out, frame))
        answer = orjson.loads(out)
        assert answer["seq_num"] == seq
        assert answer["type"] in ("success", "error")
        assert isinstance(answer["message"], str) and answer["message"]
        fields = {"type", "seq_num", "message"} | ({"prediction"} if answer["type"] == "success"
                                                   else set())
        sent = _json_object(frame) if is_text else None
        if sent is not None and "request_id" in sent:
            assert answer["request_id"] == sent["request_id"]
            fields.add("request_id")
        assert set(answer) == fields
    assert conn.predictions + conn.errors == len(frames)


def _json_object(text: str):
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
