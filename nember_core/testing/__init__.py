"""The testing kit for plugin authors: contract suites and a real server in a fixture.

::

    from nember_core.testing import FamilyContract, KeyStoreContract

    class TestMyFamily(FamilyContract):
        family = MyFamily()

    class TestMyKeyStore(KeyStoreContract):
        plugin_name = "my_keys"
        options = {"url": "..."}

The fixtures (``nember_server``, ``nember_ws``, ``nember_plugins``, ``nember_config``) come
from the pytest plugin :mod:`nember_core.testing.pytest_plugin`, active once Nember is
installed. Install the kit's own dependencies with ``pip install 'nember[testing]'``.

Names are imported on first use, so that the pytest plugin (which imports this package)
costs nothing in test runs that don't use the kit.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "FamilyContract": ".families",
    "KeyStoreContract": ".contracts.key_store",
    "BillingLedgerContract": ".contracts.billing",
    "ModelStoreContract": ".contracts.model_store",
    "ConnectionRegistryContract": ".contracts.connection_registry",
    "JobBoardContract": ".contracts.job_board",
    "StoreContract": ".stores",
    "NemberServer": ".server",
    "running_server": ".server",
    "write_prices": ".data",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)
