"""The Python SDK (sdk/python, ``nember_client``) against a real Nember server.

In-process tests serve the real application on a loopback port of the test's event loop
(tests/inprocess/conftest.py's fixtures); the e2e ones (``pytest -m e2e``) start real
``nember serve`` processes (tests/conftest.py's ``servers``), to kill and restart them.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiohttp import web

from nember_core.app.nember import Nember
from nember_core.app.server import create_app
from tests.harness import free_port

try:
    from nember_client import AsyncClient
except ImportError as exc:  # a clear word rather than a collection error
    raise ImportError("tests/sdk test the installed SDK: "
                      "`.venv/bin/pip install -e ./sdk/python` first") from exc

# The in-process tier's fixtures: `prepared` (a data folder with two accounts, a key each and
# example_strategy's DecisionTree class and reg models), `nember`, `client`, `services`.
# (Imported: pytest takes `pytest_plugins` from the top conftest only. A fixture's parameter
# of the same name is what pytest passes in, hence the F811 silences below.)
from tests.inprocess.conftest import client, nember, prepared, services  # noqa: F401

STRAT, FAMILY = "example_strategy", "DecisionTree"
# The models were trained on standard normal features: these points lie within what they saw,
# and a value of 50 far outside.
INSIDE = [{"point1": 0.3, "point2": -0.2}, {"point1": -0.1, "point2": 0.4}]
OUTSIDE = [{"point1": 50, "point2": -0.2}, {"point1": -0.1, "point2": 0.4}]


def ws_url(client) -> str:  # noqa: F811 - an aiohttp test client
    return str(client.make_url("/ws")).replace("http://", "ws://", 1)


@pytest.fixture
def url(client) -> str:  # noqa: F811
    """The in-process server's websocket URL."""
    return ws_url(client)


@pytest.fixture
async def sdk(url, prepared):  # noqa: F811
    """An AsyncClient connected to the in-process server with the prepared account's key."""
    async with AsyncClient(url, prepared.key, request_timeout=5.0, max_backoff=0.5) as opened:
        yield opened


class LoopbackServer:
    """The real application on a fixed loopback port of this event loop, that a test can
    stop (connections drained with 1001, as on SIGTERM) and start again on the same port."""

    def __init__(self, config):
        self.config = config
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        self.runner = web.AppRunner(create_app(Nember.load(str(self.config))),
                                    shutdown_timeout=2.0)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()


@pytest.fixture
async def loopback(prepared):  # noqa: F811
    server = LoopbackServer(prepared.config)
    await server.start()
    yield server
    with contextlib.suppress(Exception):
        await server.stop()


async def eventually(probe, timeout: float = 10.0, what: str = "the condition"):
    """Await ``probe()`` (or call it) until it returns something truthy, and return that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = probe()
        if asyncio.iscoroutine(found):
            found = await found
        if found:
            return found
        assert loop.time() < deadline, f"no {what} within {timeout}s"
        await asyncio.sleep(0.02)
