"""Every hook a Nember plugin can implement, documented in one place.

A plugin is a module (or object) registered under the ``nember`` entry-point group::

    [project.entry-points.nember]
    my_families = "my_package.nember_plugin"

whose functions are marked with ``@nember_core.hookimpl``. The first-party plugins in
``plugins/`` are registered exactly this way.

Hooks run at start-up (to collect providers) and never per message: each returns objects
whose methods the core then calls directly.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("nember")


@hookspec
def nember_model_families():
    """Return a list of model families (objects following ``interfaces.ModelFamily``).

    Each family's ``name`` is what requests send as ``model_name`` and what ``nember train
    --model`` takes. Two plugins may not provide the same name.
    """


@hookspec
def nember_key_stores():
    """Return a list of ``interfaces.Provider`` whose ``create`` makes a ``KeyStore``.

    The config's ``key_store.plugin`` picks one by name; the rest of that section is the
    provider's ``options``.
    """


@hookspec
def nember_billing_ledgers():
    """Return a list of ``interfaces.Provider`` whose ``create`` makes a ``BillingLedger``.

    Picked by ``billing.plugin``; ``billing.price`` and ``billing.currency`` belong to the
    core, the section's other keys to the provider's ``options``.
    """


@hookspec
def nember_model_stores():
    """Return a list of ``interfaces.Provider`` whose ``create`` makes a ``ModelStore``.

    Picked by ``model_store.plugin``.
    """


@hookspec
def nember_connection_registries():
    """Return a list of ``interfaces.Provider`` whose ``create`` makes a ``ConnectionRegistry``.

    Picked by ``connection_registry.plugin``.
    """
