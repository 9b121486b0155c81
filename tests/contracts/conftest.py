"""The first-party stores pass the testing kit's contract suites, as a third party's would.

Each test module subclasses a suite of ``nember_core.testing`` with
:class:`EveryInstalledProvider`: its tests run once per provider of the suite's role that the
plugin manager finds (entry points, exactly as a server finds them), so a new plugin is checked
by the same tests as the first-party ones. Providers that need a service get it from
``OPTIONS``; a provider this suite knows no options for is skipped with the reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from nember_core.plugins import collect_providers, plugin_manager
from tests.shared_services import REDIS, fresh_database, fresh_redis_prefix


@contextlib.asynccontextmanager
async def _postgres() -> AsyncIterator[dict]:
    pytest.importorskip("asyncpg", reason="the postgres extra is not installed")
    async with fresh_database() as dsn:
        yield {"dsn": dsn}


@contextlib.asynccontextmanager
async def _redis() -> AsyncIterator[dict]:
    pytest.importorskip("redis", reason="the redis extra is not installed")
    async with fresh_redis_prefix() as prefix:
        yield {"url": REDIS, "prefix": prefix}


@contextlib.asynccontextmanager
async def _none() -> AsyncIterator[dict]:
    yield {}


# The options of each plugin that needs a service (made fresh per test, dropped after it);
# the embedded ones need none.
OPTIONS: dict[str, Callable[[], contextlib.AbstractAsyncContextManager[dict]]] = {
    "sqlite": _none,
    "local_disk": _none,
    "memory": _none,
    "postgres": _postgres,
    "redis": _redis,
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Parametrizing ``plugin`` directly overrides the suite's fixture of that name.
    role = getattr(metafunc.cls, "role", None)
    if role and "plugin" in metafunc.fixturenames:
        metafunc.parametrize("plugin", sorted(collect_providers(plugin_manager())[role]))


class EveryInstalledProvider:
    """Mixed into a kit suite: the options of whichever provider the test runs over."""

    @pytest_asyncio.fixture
    async def store_options(self, plugin: str) -> AsyncIterator[dict[str, Any]]:
        if plugin not in OPTIONS:
            pytest.skip(f"the contract suite knows no test options for plugin {plugin!r}")
        async with OPTIONS[plugin]() as options:
            yield options
