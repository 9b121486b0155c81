"""One contract suite per store interface, run over every implementation installed.

Each test module names its ``ROLE``; its tests run once per provider of that role that the
plugin manager finds (entry points, exactly as a server finds them), so a new plugin is
checked by the same tests as the first-party ones. ``open_store(node)`` opens an instance the
way a server does, from a config section; calling it twice gives two processes (or nodes)
sharing one store. Providers that need a service get it from ``OPTIONS``; a provider this
suite knows no options for is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable

import pytest

from nember_core.app.nember import Nember
from nember_core.plugin_api import PluginContext
from nember_core.plugins import collect_providers, plugin_manager
from tests.harness import write_config
from tests.shared_services import REDIS, fresh_database, fresh_redis_prefix


async def _postgres(opened: contextlib.AsyncExitStack) -> dict:
    return {"dsn": await opened.enter_async_context(fresh_database())}


async def _redis(opened: contextlib.AsyncExitStack) -> dict:
    return {"url": REDIS, "prefix": await opened.enter_async_context(fresh_redis_prefix())}


async def _none(opened: contextlib.AsyncExitStack) -> dict:
    return {}


# The options of each plugin that needs a service; the embedded ones need none.
OPTIONS: dict[str, Callable[[contextlib.AsyncExitStack], Awaitable[dict]]] = {
    "sqlite": _none,
    "local_disk": _none,
    "memory": _none,
    "postgres": _postgres,
    "redis": _redis,
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "plugin" in metafunc.fixturenames:
        role = metafunc.module.ROLE
        names = sorted(collect_providers(plugin_manager())[role])
        metafunc.parametrize("plugin", names)


@pytest.fixture
def provider(plugin, request):
    role = request.module.ROLE
    found = collect_providers(plugin_manager())[role][plugin]
    if plugin not in OPTIONS:
        pytest.skip(f"the contract suite knows no test options for plugin {plugin!r}")
    return found


@pytest.fixture
async def open_store(plugin, provider, request, tmp_path):
    """``await open_store(node="node-1")``: an instance of ``plugin`` for the module's role,
    opened as a server would from its config section; all share one store.
    ``await open_store.close(instance)`` closes one early; the rest close after the test."""
    role = request.module.ROLE
    services = contextlib.AsyncExitStack()
    section = {"plugin": plugin, **await OPTIONS[plugin](services)}
    config = write_config(tmp_path, data_dir=tmp_path / "data", **{role: section})
    nember = Nember.load(str(config))
    opened = []

    async def open_one(node: str = "node-1"):
        context = PluginContext(data_dir=nember.config.data_dir, node=node)
        nember.config.data_dir.mkdir(parents=True, exist_ok=True)
        store = provider.create(nember.config.section(role).options, context)
        store = await store if inspect.isawaitable(store) else store
        opened.append(store)
        return store

    async def close_one(store) -> None:
        """Close one instance before the test ends (a process that stops)."""
        opened.remove(store)
        await store.close()

    open_one.close = close_one
    async with services:  # the database or keys dropped once every instance is closed
        yield open_one
        for store in reversed(opened):
            await store.close()


@pytest.fixture
async def store(open_store):
    return await open_store()


def shared(provider) -> None:
    """Skip a test of what several processes see, for a store kept in one process."""
    if not provider.shared_across_processes:
        pytest.skip(f"{provider.name} keeps its state in one process")
