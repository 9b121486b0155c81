"""The BillingLedger contract over every installed provider.

The suite is the testing kit's (nember_core/testing/contracts/billing.py): the one
a third party runs over their own BillingLedger.
"""

from __future__ import annotations

from nember_core.testing import BillingLedgerContract

from .conftest import EveryInstalledProvider


class TestBillingLedger(EveryInstalledProvider, BillingLedgerContract):
    pass
