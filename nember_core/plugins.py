"""Finding plugins: the ``nember`` entry-point group, and nothing else."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .config import ROLES
from .errors import ConfigError, NemberError
from .plugin_api import ModelFamily, Provider

ENTRY_POINT_GROUP = "nember"


def _entry_points() -> Iterator[EntryPoint]:
    seen = set()
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name not in seen:  # the same distribution seen twice on sys.path
            seen.add(entry_point.name)
            yield entry_point


def _load(entry_point: EntryPoint) -> object:
    try:
        return entry_point.load()
    except Exception as exc:  # a broken plugin gets one line, not a traceback
        raise NemberError(
            f"the plugin {entry_point.name!r} ({entry_point.value}) failed to load: {exc}"
        ) from None


def _manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def plugin_manager(extra_plugins: Iterable[object] = ()) -> pluggy.PluginManager:
    """A plugin manager with every installed plugin loaded and checked."""
    pm = _manager()
    for entry_point in _entry_points():
        pm.register(_load(entry_point), name=entry_point.name)
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


def check_family(family: object) -> None:
    """Raise :class:`ConfigError` when ``family`` lacks part of the interface: said at
    start-up, not at the first training or request."""
    missing = [member for member in FAMILY_MEMBERS if not hasattr(family, member)]
    if missing:
        raise ConfigError(f"the model family {getattr(family, 'name', family)!r} lacks "
                          f"{', '.join(missing)} (see nember_core.plugin_api.ModelFamily)")


def collect_families(pm: pluggy.PluginManager) -> dict[str, ModelFamily]:
    families: dict[str, ModelFamily] = {}
    for family in _flatten(pm.hook.nember_model_families()):
        check_family(family)
        if family.name in families:
            raise ConfigError(f"two plugins provide the model family {family.name!r}")
        families[family.name] = family
    return families


def installed_families() -> dict[str, ModelFamily]:
    """The families every installed plugin provides (what a training worker process needs)."""
    return collect_families(plugin_manager())


@attrs.frozen
class PluginReport:
    """One installed plugin as ``nember plugins`` shows it."""

    name: str  # its entry point's name
    target: str  # the module (or object) the entry point names
    distribution: str | None  # the package that installed it, and its version
    version: str | None
    hooks: tuple[str, ...] = ()  # the hooks it implements
    provides: tuple[str, ...] = ()  # what they return: "model family X", "key_store sqlite"
    error: str | None = None  # why it can't be used; nothing else is known then


def _provided(hook: str, results: Iterable[Any] | None) -> list[str]:
    role = {hook_name: role for role, hook_name in ROLES.items()}.get(hook)
    shown = []
    for item in results or ():
        if role is None:
            check_family(item)
            shown.append(f"model family {item.name}")
        else:
            shown.append(f"{role} {item.name}" + (" (default)" if item.default else ""))
    return shown


def _report(entry_point: EntryPoint) -> PluginReport:
    dist = entry_point.dist
    report = PluginReport(entry_point.name, entry_point.value,
                          dist.name if dist else None, dist.version if dist else None)
    try:
        plugin = _load(entry_point)
        pm = _manager()
        pm.register(plugin, name=entry_point.name)
        hooks, provides = [], []
        for caller in pm.get_hookcallers(plugin) or ():
            hooks.append(caller.name)
            if not caller.has_spec():
                raise NemberError(f"it implements {caller.name}, which is no Nember hook "
                                  "(misspelt?)")
            for impl in caller.get_hookimpls():
                returned: Any = impl.function()
                provides += _provided(caller.name, returned)
    except Exception as exc:  # a broken plugin is listed with its error, not a traceback
        return attrs.evolve(report, error=str(exc) or type(exc).__name__)
    return attrs.evolve(report, hooks=tuple(hooks), provides=tuple(provides))


def plugin_reports() -> list[PluginReport]:
    """Every plugin installed in the ``nember`` entry-point group, each loaded on its own, so
    that one that fails is reported with its error while the others are still listed."""
    return [_report(entry_point)
            for entry_point in sorted(_entry_points(), key=lambda ep: ep.name)]
