"""Finding plugins: the ``nember`` entry-point group, and nothing else."""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import entry_points

import pluggy

from . import hookspecs
from .errors import NemberError

ENTRY_POINT_GROUP = "nember"


def plugin_manager(extra_plugins: Iterable[object] = ()) -> pluggy.PluginManager:
    """A plugin manager with every installed plugin loaded and checked."""
    pm = pluggy.PluginManager("nember")
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


def flatten(results: Iterable[Iterable[object] | None]) -> list:
    return [item for result in results if result for item in result]
