"""The ModelStore contract over every installed provider.

The suite is the testing kit's (nember_core/testing/contracts/model_store.py): the one
a third party runs over their own ModelStore.
"""

from __future__ import annotations

from nember_core.testing import ModelStoreContract

from .conftest import EveryInstalledProvider


class TestModelStore(EveryInstalledProvider, ModelStoreContract):
    pass
