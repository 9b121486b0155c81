"""The base of the store contract suites: one store of one role, opened as a server opens it.

A suite class names its ``role``; a subclass names the provider (``plugin_name``) and its
options. ``open_store(node)`` opens an instance from the config section a server would read
(validated the same way); calling it twice gives two processes (or nodes) sharing one store.
Every instance is closed after the test.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytest_asyncio

from nember_core.config import parse_config
from nember_core.plugin_api import PluginContext, Provider
from nember_core.plugins import collect_providers, plugin_manager


class StoreContract:
    """Subclass a role's suite (``KeyStoreContract``...) and set ``plugin_name`` and
    ``options``, or override the ``store_options`` fixture (it may be async, and may yield to
    drop what it made) for options made per test."""

    role: ClassVar[str]
    plugin_name: ClassVar[str | None] = None  # the Provider's name, as the config's ``plugin``
    options: ClassVar[Mapping[str, Any]] = {}  # the rest of the config section

    @pytest.fixture
    def plugin(self) -> str:
        if not self.plugin_name:
            pytest.fail(f"{type(self).__name__} must set plugin_name: the provider's name")
        return self.plugin_name

    @pytest.fixture
    def store_options(self) -> dict[str, Any]:
        return dict(self.options)

    @pytest.fixture
    def provider(self, plugin: str) -> Provider:
        installed = collect_providers(plugin_manager())[self.role]
        if plugin not in installed:
            pytest.fail(f"no installed plugin provides the {self.role} {plugin!r} (installed: "
                        f"{', '.join(sorted(installed)) or 'none'}); is its package installed, "
                        "with its entry point in the 'nember' group?")
        return installed[plugin]

    @pytest_asyncio.fixture
    async def open_store(self, plugin: str, provider: Provider, store_options: dict,
                         tmp_path: Path):
        """``await open_store(node="node-1")`` opens an instance; all share one store.
        ``await open_store.close(instance)`` closes one early (a process that stops)."""
        raw = {"data_dir": str(tmp_path / "data"), self.role: {"plugin": plugin,
                                                              **store_options}}
        config = parse_config(raw, tmp_path / "nember.yaml",
                              collect_providers(plugin_manager()))
        options = config.section(self.role).options
        opened: list[Any] = []

        async def open_one(node: str = "node-1"):
            config.data_dir.mkdir(parents=True, exist_ok=True)
            store = provider.create(options, PluginContext(data_dir=config.data_dir, node=node))
            store = await store if inspect.isawaitable(store) else store
            opened.append(store)
            return store

        async def close_one(store) -> None:
            opened.remove(store)
            await store.close()

        open_one.close = close_one  # type: ignore[attr-defined]
        try:
            yield open_one
        finally:
            for store in reversed(opened):
                await store.close()

    @pytest_asyncio.fixture
    async def store(self, open_store):
        return await open_store()


def shared(provider: Provider) -> None:
    """Skip a test of what several processes see, for a store kept in one process."""
    if not provider.shared_across_processes:
        pytest.skip(f"{provider.name} keeps its state in one process")
