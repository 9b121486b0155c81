"""Turning the config into live objects: the plugin picked for each role, and the families."""

from __future__ import annotations

import inspect
import socket
from typing import Any

import attrs
import pluggy

from .config import ROLES, Config, load_config
from .errors import ConfigError
from .interfaces import (
    BillingLedger,
    ConnectionRegistry,
    KeyStore,
    ModelFamily,
    ModelStore,
    PluginContext,
    Provider,
)
from .plugin_manager import flatten, plugin_manager


def collect_providers(pm: pluggy.PluginManager) -> dict[str, dict[str, Provider]]:
    found: dict[str, dict[str, Provider]] = {}
    for role, (hook_name, _default) in ROLES.items():
        by_name: dict[str, Provider] = {}
        for provider in flatten(getattr(pm.hook, hook_name)()):
            if provider.name in by_name:
                raise ConfigError(f"two plugins provide the {role} {provider.name!r}")
            by_name[provider.name] = provider
        found[role] = by_name
    return found


def collect_families(pm: pluggy.PluginManager) -> dict[str, ModelFamily]:
    families: dict[str, ModelFamily] = {}
    for family in flatten(pm.hook.nember_model_families()):
        if family.name in families:
            raise ConfigError(f"two plugins provide the model family {family.name!r}")
        families[family.name] = family
    return families


@attrs.define
class Nember:
    """The loaded plugins and the validated config: what every command starts from."""

    pm: pluggy.PluginManager
    config: Config
    providers: dict[str, dict[str, Provider]]
    families: dict[str, ModelFamily]

    @classmethod
    def load(cls, config_file: str | None, extra_plugins=()) -> Nember:
        pm = plugin_manager(extra_plugins)
        providers = collect_providers(pm)
        config = load_config(config_file, providers)
        return cls(pm=pm, config=config, providers=providers, families=collect_families(pm))

    def family(self, name: str) -> ModelFamily:
        try:
            return self.families[name]
        except KeyError:
            known = ", ".join(sorted(self.families))
            raise ConfigError(f"no installed model family {name!r} (installed: {known})") from None

    async def open(self) -> Services:
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        context = PluginContext(
            data_dir=config.data_dir, node=config.server.node or socket.gethostname()
        )
        sections = {
            "key_store": config.key_store,
            "billing": config.billing.section,
            "model_store": config.model_store,
            "connection_registry": config.connection_registry,
        }
        opened: dict[str, Any] = {}
        try:
            for role, section in sections.items():
                provider = self.providers[role][section.plugin]
                instance = provider.create(section.options, context)
                opened[role] = await instance if inspect.isawaitable(instance) else instance
        except BaseException:
            for instance in opened.values():
                await instance.close()
            raise
        return Services(
            node=context.node,
            key_store=opened["key_store"],
            billing=opened["billing"],
            model_store=opened["model_store"],
            registry=opened["connection_registry"],
        )


@attrs.define
class Services:
    """The storage plugins in use, opened."""

    node: str
    key_store: KeyStore
    billing: BillingLedger
    model_store: ModelStore
    registry: ConnectionRegistry

    async def close(self) -> None:
        for service in (self.registry, self.model_store, self.billing, self.key_store):
            await service.close()
