"""Nember's pytest plugin (the ``pytest11`` entry point ``nember``): fixtures for plugin authors.

Active wherever Nember is installed; it adds fixtures and nothing else, so it stays out of the
way of tests that don't ask for them. The async fixtures need pytest-asyncio
(``pip install 'nember[testing]'``):

``nember_server``
    A real server started in the test's event loop on a loopback port, with every installed
    plugin and those of ``nember_plugins``, its stores in a temporary folder; an account and a
    ``manage`` key on it (see :class:`nember_core.testing.server.NemberServer`).
``nember_ws``
    A websocket to that server that sent the key and heard ``Valid API key.``.
``nember_plugins``
    Override to register plugin objects that are not installed (default: none).
``nember_config``
    Override to pick stores or settings: the YAML config's sections as a dict (default: the
    embedded stores).
"""

from __future__ import annotations

import pytest

try:
    import pytest_asyncio
except ImportError:  # the fixtures below say how to get it when asked for
    pytest_asyncio = None  # type: ignore[assignment]


@pytest.fixture
def nember_plugins() -> list[object]:
    """Plugin objects to register beside the installed ones (override it)."""
    return []


@pytest.fixture
def nember_config() -> dict:
    """Config sections for ``nember_server`` (override it), e.g.
    ``{"key_store": {"plugin": "my_keys", "url": "..."}}``."""
    return {}


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def nember_server(tmp_path_factory, nember_plugins, nember_config):
        """A real Nember server in this test's event loop (see the module's doc)."""
        from .server import running_server

        folder = tmp_path_factory.mktemp("nember-server")
        async with running_server(folder, nember_config, nember_plugins) as server:
            yield server

    @pytest_asyncio.fixture
    async def nember_ws(nember_server):
        """An authenticated websocket to ``nember_server``."""
        import aiohttp

        async with aiohttp.ClientSession() as session:
            ws = await nember_server.connect(session)
            yield ws
            await ws.close()

else:

    @pytest.fixture
    def nember_server():
        pytest.fail("nember_server needs pytest-asyncio: pip install 'nember[testing]'")

    @pytest.fixture
    def nember_ws():
        pytest.fail("nember_ws needs pytest-asyncio: pip install 'nember[testing]'")
