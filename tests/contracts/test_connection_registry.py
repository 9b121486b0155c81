"""The ConnectionRegistry contract over every installed provider.

The suite is the testing kit's (nember_core/testing/contracts/connection_registry.py): the one
a third party runs over their own ConnectionRegistry.
"""

from __future__ import annotations

from nember_core.testing import ConnectionRegistryContract

from .conftest import EveryInstalledProvider


class TestConnectionRegistry(EveryInstalledProvider, ConnectionRegistryContract):
    pass
