"""Malformed frames: each gets one clear error and the connection stays usable."""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.helpers import REQUEST, ask, authed, request

pytestmark = pytest.mark.e2e  # real nember processes: `pytest -m e2e`

P = [{"point1": 3, "point2": 2}, {"point1": 1, "point2": 3}]
EXPECTS = "the model expects 'point1', 'point2'."


def points(*pairs):
    return [dict(p) for p in pairs]


CASES = [
    ("not json", "{not json", "The request is not valid JSON; send one JSON object per text "
     "frame (NaN and Infinity are not JSON)."),
    ("NaN literal", '{"strat_name": NaN}', None),
    ("Infinity literal", request().replace("3", "Infinity", 1), None),
    ("huge exponent", request().replace('"point1": 3', '"point1": 1e999', 1), None),
    ("array", "[1, 2, 3]", "The request must be a JSON object, got an array."),
    ("string", '"hello"', "The request must be a JSON object, got a string."),
    ("number", "42", "The request must be a JSON object, got a number."),
    ("null", "null", "The request must be a JSON object, got null."),
    ("empty object", "{}", "Missing field 'strat_name': expected a non-empty string."),
    ("strat not string", request(strat_name=5),
     "Field 'strat_name' must be a non-empty string, got a number."),
    ("strat empty", request(strat_name=""),
     "Field 'strat_name' must be a non-empty string, got an empty string."),
    ("model missing", json.dumps({k: v for k, v in REQUEST.items() if k != "model_name"}),
     "Missing field 'model_name': expected a non-empty string."),
    ("model list", request(model_name=["DecisionTree"]),
     "Field 'model_name' must be a non-empty string, got an array."),
    ("type missing", json.dumps({k: v for k, v in REQUEST.items() if k != "model_type"}),
     "Missing field 'model_type': expected 'class' or 'reg'."),
    ("type unknown", request(model_type="classification"),
     "Field 'model_type' must be 'class' or 'reg', got 'classification'."),
    ("type number", request(model_type=1),
     "Field 'model_type' must be 'class' or 'reg', got a number."),
    ("points missing", json.dumps({k: v for k, v in REQUEST.items() if k != "DataPoints"}),
     "Missing field 'DataPoints': expected a list of data point objects."),
    ("points object", request(DataPoints={"point1": 1}),
     "Field 'DataPoints' must be a list of data point objects, got an object."),
    ("too few points", request(DataPoints=P[:1]),
     "Field 'DataPoints' has 1 data point; this model was trained with 2 (its window)."),
    ("too many points", request(DataPoints=P * 2),
     "Field 'DataPoints' has 4 data points; this model was trained with 2 (its window)."),
    ("no points", request(DataPoints=[]),
     "Field 'DataPoints' has 0 data points; this model was trained with 2 (its window)."),
    ("point not object", request(DataPoints=[P[0], 7]),
     "DataPoints[1] must be an object of feature values, got a number."),
    ("missing feature", request(DataPoints=[P[0], {"point1": 1}]),
     f"DataPoints[1] is missing the feature 'point2'; {EXPECTS}"),
    ("extra feature", request(DataPoints=[{**P[0], "point3": 1}, P[1]]),
     f"DataPoints[0] has unexpected feature 'point3'; {EXPECTS}"),
    ("renamed features", request(DataPoints=[{"a": 1, "b": 2}, P[1]]),
     f"DataPoints[0] is missing the features 'point1', 'point2'; {EXPECTS}"),
    ("numeric string", request(DataPoints=[{"point1": "3", "point2": 2}, P[1]]),
     "DataPoints[0]['point1'] must be a number, got a string."),
    ("boolean", request(DataPoints=[P[0], {"point1": True, "point2": 2}]),
     "DataPoints[1]['point1'] must be a number, got a boolean."),
    ("null value", request(DataPoints=[P[0], {"point1": 1, "point2": None}]),
     "DataPoints[1]['point2'] must be a number, got null."),
    ("nested value", request(DataPoints=[P[0], {"point1": 1, "point2": [2]}]),
     "DataPoints[1]['point2'] must be a number, got an array."),
    ("api key mismatch", request(api_key="nmb_somebody_else"),
     "Field 'api_key' does not match the API key this connection authenticated with."),
    ("model not trained", request(model_type="reg", strat_name="other"),
     "Model configuration not found in the backend."),
]


@pytest.mark.parametrize("frame,expected", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
async def test_malformed_frame_gets_one_clear_error(server, trained, frame, expected):
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, trained.key)
        answer = await ask(ws, frame)
        assert set(answer) == {"type", "seq_num", "message"}
        assert answer["type"] == "error" and answer["seq_num"] == 1
        if expected is None:  # not JSON at all: NaN, Infinity, out-of-range numbers
            assert answer["message"].startswith("The request is not valid JSON")
        else:
            assert answer["message"] == expected
        good = await ask(ws, request())
        assert good["type"] == "success" and good["seq_num"] == 2
        await ws.close()


def test_the_table_has_at_least_25_cases():
    assert len(CASES) >= 25


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
