"""Every hook a Nember plugin can implement, documented in one place.

A plugin is a module (or object) registered under the ``nember`` entry-point group::

    [project.entry-points.nember]
    my_families = "my_package.nember_plugin"

whose functions are marked with ``@hookimpl`` (from :mod:`nember_core.plugin_api`, the one
module a plugin imports). The first-party plugins in ``plugins/`` are registered exactly this
way.

Hooks run at start-up (to collect providers) and never per message: each returns objects
whose methods the core then calls directly. A hook implementation may return an empty list
(an optional library that is not installed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .plugin_api import (
        BillingLedger,
        ConnectionRegistry,
        JobBoard,
        KeyStore,
        ModelFamily,
        ModelStore,
        Provider,
    )

PROJECT = "nember"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# A spec's body never runs: pluggy takes its name, arguments and docstring. Each raises rather
# than ending after its docstring, so that the return type it documents (what an
# implementation returns) type-checks as it stands.


@hookspec
def nember_model_families() -> list[ModelFamily]:
    """Return model families (objects following ``plugin_api.ModelFamily``).

    Each family's ``name`` is what requests send as ``model_name`` and what ``nember train
    --model`` takes. Two plugins may not provide the same name.
    """
    raise NotImplementedError


@hookspec
def nember_key_stores() -> list[Provider[KeyStore]]:
    """Return ``Provider``s whose ``create`` makes a ``KeyStore``.

    The config's ``key_store.plugin`` picks one by name; the rest of that section is the
    provider's ``options``.
    """
    raise NotImplementedError


@hookspec
def nember_billing_ledgers() -> list[Provider[BillingLedger]]:
    """Return ``Provider``s whose ``create`` makes a ``BillingLedger``.

    Picked by ``billing.plugin``; ``billing.price`` and ``billing.currency`` belong to the
    core, the section's other keys to the provider's ``options``.
    """
    raise NotImplementedError


@hookspec
def nember_model_stores() -> list[Provider[ModelStore]]:
    """Return ``Provider``s whose ``create`` makes a ``ModelStore``.

    Picked by ``model_store.plugin``.
    """
    raise NotImplementedError


@hookspec
def nember_connection_registries() -> list[Provider[ConnectionRegistry]]:
    """Return ``Provider``s whose ``create`` makes a ``ConnectionRegistry``.

    Picked by ``connection_registry.plugin``. A registry that keeps each process's connections
    to itself says so with ``shared_across_processes=False``; ``--workers`` refuses it.
    """
    raise NotImplementedError


@hookspec
def nember_job_boards() -> list[Provider[JobBoard]]:
    """Return ``Provider``s whose ``create`` makes a ``JobBoard``: the training-job queue,
    jobs with their data claimed by any server process and their state read by every one
    (``--workers``, several nodes).

    Picked by ``jobs.plugin``.
    """
    raise NotImplementedError
