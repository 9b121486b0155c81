"""Finding plugins: the ``nember`` entry-point group, and nothing else."""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import entry_points

import pluggy

from . import hookspecs
from .config import ROLES
from .errors import ConfigError, NemberError
from .plugin_api import ModelFamily, Provider

ENTRY_POINT_GROUP = "nember"


def plugin_manager(extra_plugins: Iterable[object] = ()) -> pluggy.PluginManager:
    """A plugin manager with every installed plugin loaded and checked."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if pm.has_plugin(entry_point.name):
            continue  # the same distribution seen twice on sys.path
        try:
            plugin = entry_point.load()
        except Exception as exc:  # a broken plugin gets one line, not a traceback
            raise NemberError(
                f"the plugin {entry_point.name!r} ({entry_point.value}) failed to load: {exc}"
            ) from None
        pm.register(plugin, name=entry_point.name)
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.check_pending()  # a misspelt hook implementation is an error, not silence
    return pm


def _flatten(results: Iterable[Iterable[object] | None]) -> list:
    return [item for result in results if result for item in result]


def collect_providers(pm: pluggy.PluginManager) -> dict[str, dict[str, Provider]]:
    """role -> {plugin name -> Provider}, for every role of the config."""
    found: dict[str, dict[str, Provider]] = {}
    for role, hook_name in ROLES.items():
        by_name: dict[str, Provider] = {}
        for provider in _flatten(getattr(pm.hook, hook_name)()):
            if provider.name in by_name:
                raise ConfigError(f"two plugins provide the {role} {provider.name!r}")
            by_name[provider.name] = provider
        defaults = [name for name, provider in by_name.items() if provider.default]
        if len(defaults) > 1:
            raise ConfigError(f"two plugins claim to be the default {role}: {', '.join(defaults)}")
        found[role] = by_name
    return found


FAMILY_MEMBERS = ("name", "library_version", "parameters", "fit", "dumps", "loads",
                  "predictor", "predict")


def collect_families(pm: pluggy.PluginManager) -> dict[str, ModelFamily]:
    families: dict[str, ModelFamily] = {}
    for family in _flatten(pm.hook.nember_model_families()):
        missing = [member for member in FAMILY_MEMBERS if not hasattr(family, member)]
        if missing:  # said at start-up, not at the first training or request
            raise ConfigError(f"the model family {getattr(family, 'name', family)!r} lacks "
                              f"{', '.join(missing)} (see nember_core.plugin_api.ModelFamily)")
        if family.name in families:
            raise ConfigError(f"two plugins provide the model family {family.name!r}")
        families[family.name] = family
    return families


def installed_families() -> dict[str, ModelFamily]:
    """The families every installed plugin provides (what a training worker process needs)."""
    return collect_families(plugin_manager())
