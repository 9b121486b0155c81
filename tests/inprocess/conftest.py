"""The in-process tier: the whole application inside the test's event loop.

pytest-aiohttp's ``aiohttp_client`` serves ``create_app`` on a loopback port of this process;
the stores are the configured plugins' real files under ``tmp_path``. No subprocess, no
browser: the default ``pytest`` run stays well under a minute. The end-to-end tier (real
``nember`` processes, Chromium) is ``pytest -m e2e``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import attrs
import pytest

from nember_core.app.nember import Nember
from nember_core.app.server import create_app
from nember_core.services import TrainingRequest
from tests.harness import PASSWORD, write_config, write_prices

EMAIL = "trader@example.com"
OTHER_EMAIL = "other@example.com"
VALID_KEY = {"status": "success", "message": "Valid API key."}


@attrs.frozen
class Prepared:
    """A data folder with two accounts, a key each, and DecisionTree models of the first."""

    config: Path
    data: Path  # the CSV the models were trained on
    key: str
    other_key: str


async def _prepare(config: Path, data: Path) -> tuple[str, str]:
    nember = Nember.load(str(config))
    async with nember.services() as services:
        account = await services.accounts.create(EMAIL, PASSWORD)
        key = await services.keys.create(account.id, "default", "manage")
        other = await services.accounts.create(OTHER_EMAIL, PASSWORD)
        other_key = await services.keys.create(other.id, "default", "manage")
        for model_type, target in (("class", "direction"), ("reg", "move")):
            await services.models.train(account.id, TrainingRequest(
                strat="example_strategy", family="DecisionTree", model_type=model_type,
                data=data, target=target, window=2, features=["point1", "point2"],
            ))
    return key.secret, other_key.secret


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Prepared:
    """Made once per module (scrypt and training cost a little); tests add what they need."""
    folder = tmp_path_factory.mktemp("inprocess")
    config = write_config(folder, server={"model_refresh_interval": 0.05,
                                          "revocation_check_interval": 0.05})
    data = write_prices(folder / "prices.csv")
    key, other_key = asyncio.run(_prepare(config, data))
    return Prepared(config=config, data=data, key=key, other_key=other_key)


@pytest.fixture
def nember(prepared) -> Nember:
    return Nember.load(str(prepared.config))


@pytest.fixture
async def client(aiohttp_client, nember):
    """The application served on a loopback port of this process, started and stopped."""
    return await aiohttp_client(create_app(nember))


@pytest.fixture
async def services(nember):
    """The service layer over the same stores, as a second process (the CLI) would open it."""
    async with nember.services() as opened:
        yield opened


async def authed(client, key: str):
    """A websocket that sent ``key`` and heard ``Valid API key.``."""
    ws = await client.ws_connect("/ws")
    await ws.send_str(key)
    assert json.loads(await ws.receive_str(timeout=5)) == VALID_KEY
    return ws


async def refused(client, first_frame: str | bytes) -> tuple[dict, int]:
    """The answer to a first frame the server refuses, and the close code that follows."""
    ws = await client.ws_connect("/ws")
    if isinstance(first_frame, bytes):
        await ws.send_bytes(first_frame)
    else:
        await ws.send_str(first_frame)
    answer = json.loads(await ws.receive_str(timeout=5))
    closing = await ws.receive(timeout=5)
    assert closing.type == aiohttp.WSMsgType.CLOSE
    return answer, ws.close_code


async def ask(ws, frame: str | dict) -> dict:
    await ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))
    return json.loads(await ws.receive_str(timeout=5))
