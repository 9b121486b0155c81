"""Small websocket helpers shared by the tests."""

from __future__ import annotations

import json

import aiohttp

REQUEST = {
    "strat_name": "example_strategy",
    "model_name": "DecisionTree",
    "model_type": "class",
    "DataPoints": [{"point1": 3, "point2": 2}, {"point1": 1, "point2": 3}],
}


def request(**changes) -> str:
    return json.dumps({**REQUEST, **changes})


async def authed(session: aiohttp.ClientSession, url: str, key: str, **kwargs):
    """An authenticated websocket; asserts the exact success answer."""
    ws = await session.ws_connect(url, **kwargs)
    await ws.send_str(key)
    assert json.loads(await ws.receive_str(timeout=10)) == {
        "status": "success",
        "message": "Valid API key.",
    }
    return ws


async def ask(ws, frame: str | dict) -> dict:
    await ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))
    return json.loads(await ws.receive_str(timeout=10))


def training_form(csv_bytes: bytes, **fields) -> aiohttp.FormData:
    """A POST /api/models form: the CSV and a DecisionTree class model's fields; a field set
    to None is left out."""
    data = aiohttp.FormData()
    data.add_field("data", csv_bytes, filename="prices.csv", content_type="text/csv")
    defaults = {"strat": "api", "model": "DecisionTree", "type": "class",
                "target": "direction", "window": "2", "features": "point1,point2"}
    for name, value in {**defaults, **fields}.items():
        if value is not None:
            data.add_field(name, value)
    return data
