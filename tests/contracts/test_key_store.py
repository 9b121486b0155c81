"""The KeyStore contract over every installed provider.

The suite is the testing kit's (nember_core/testing/contracts/key_store.py): the one
a third party runs over their own KeyStore.
"""

from __future__ import annotations

from nember_core.testing import KeyStoreContract

from .conftest import EveryInstalledProvider


class TestKeyStore(EveryInstalledProvider, KeyStoreContract):
    pass
