"""Turning the config into live objects: the plugin picked for each role, and the families."""

from __future__ import annotations

import contextlib
import inspect
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pluggy
import structlog

from nember_core.config import Config, ConfigSource, find_config, read_config
from nember_core.errors import NemberError
from nember_core.plugin_api import ModelFamily, PluginContext, Provider
from nember_core.plugins import collect_families, collect_providers, plugin_manager
from nember_core.services import Services
from nember_core.stores import Stores

log = structlog.get_logger("nember")


class NoData(NemberError):
    """A command that reads found no data where the config says it is (nothing was made)."""


@attrs.define
class Nember:
    """The loaded plugins and the validated config: what every command starts from."""

    pm: pluggy.PluginManager
    config: Config
    providers: dict[str, dict[str, Provider]]
    families: dict[str, ModelFamily]
    # The config file read and how it was found (``nember_core.config.find_config``).
    source: ConfigSource = ConfigSource(None, "")

    @classmethod
    def load(cls, config_file: str | None, extra_plugins=()) -> Nember:
        pm = plugin_manager(extra_plugins)
        providers = collect_providers(pm)
        source = find_config(config_file)
        config = read_config(source, providers)
        return cls(pm=pm, config=config, providers=providers, families=collect_families(pm),
                   source=source)

    def missing_data(self) -> Path | None:
        """Where the accounts would be, when nothing is there yet (absent, or an empty
        folder), else ``None``. Every command but ``accounts create`` starts from an
        account, so without them there is nothing to read. Only the embedded key store (the
        role's default plugin) keeps them in a file here: its ``path``, else in
        ``data_dir``; others (PostgreSQL...) keep them elsewhere, and are not looked at."""
        if not self.provider("key_store").default:
            return None
        place = getattr(self.config.key_store.options, "path", None) or self.config.data_dir
        if place.is_dir():
            return place if next(place.iterdir(), None) is None else None
        return None if place.exists() else place

    def require_data(self) -> None:
        """Raise :class:`NoData` (one line, saying which config was used) when a command that
        reads finds no data: it must not create empty stores and answer from them."""
        place = self.missing_data()
        if place is None:
            return
        if self.source.path is None:
            why = "no config file found; pass --config FILE, or see `nember --help`"
        else:
            why = (f"{self.source.describe()}; `nember accounts create EMAIL` makes the "
                   "first account")
        raise NoData(f"no data in {place} ({why})")

    def prepare_data_dir(self) -> None:
        """Create ``data_dir`` for this user only (it holds password hashes, the ledger and
        tenants' uploads), or say in one line why it can't be written."""
        data_dir = self.config.data_dir
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if data_dir.stat().st_mode & 0o077:
                data_dir.chmod(0o700)
                log.warning("data_dir.permissions_tightened", path=str(data_dir))
            probe = data_dir / f".probe-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise NemberError(f"{data_dir}: the data folder can't be written: "
                              f"{exc.strerror or exc}") from None

    def provider(self, role: str) -> Provider:
        """The provider the config picked for ``role``."""
        return self.providers[role][self.config.section(role).plugin]

    def plugin_context(self) -> PluginContext:
        """What every storage plugin is created with (and backs up or upgrades with)."""
        config = self.config
        return PluginContext(data_dir=config.data_dir,
                             node=config.server.node or socket.gethostname())

    async def open(self, create: bool = True) -> Stores:
        """Open every configured store. ``create=False`` (a command that only reads, or needs
        an account): when there is no data yet, raise :class:`NoData` and create nothing."""
        config = self.config
        if not create:
            self.require_data()
        if create or config.data_dir.exists():
            self.prepare_data_dir()
        context = self.plugin_context()
        opened: dict[str, Any] = {}
        try:
            for role in ("key_store", "billing", "model_store", "connection_registry", "jobs"):
                instance = self.provider(role).create(config.section(role).options, context)
                opened[role] = await instance if inspect.isawaitable(instance) else instance
        except BaseException:
            for instance in opened.values():
                await instance.close()
            raise
        return Stores(
            node=context.node,
            key_store=opened["key_store"],
            billing=opened["billing"],
            model_store=opened["model_store"],
            registry=opened["connection_registry"],
            jobs=opened["jobs"],
        )

    @contextlib.asynccontextmanager
    async def services(self, create: bool = True) -> AsyncIterator[Services]:
        """The service layer over freshly opened stores (a command's), closed after;
        ``create``: as :meth:`open`'s."""
        stores = await self.open(create)
        try:
            yield Services(self.config, self.families, stores)
        finally:
            await stores.close()
