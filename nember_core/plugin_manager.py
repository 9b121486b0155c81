"""Finding plugins: the ``nember`` entry-point group, and nothing else."""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from . import hookspecs

ENTRY_POINT_GROUP = "nember"


def plugin_manager(extra_plugins: Iterable[object] = ()) -> pluggy.PluginManager:
    """A plugin manager with every installed plugin loaded and checked."""
    pm = pluggy.PluginManager("nember")
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.check_pending()  # a misspelt hook implementation is an error, not silence
    return pm


def flatten(results: Iterable[Iterable[object] | None]) -> list:
    return [item for result in results if result for item in result]
