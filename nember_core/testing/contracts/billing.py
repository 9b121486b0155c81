"""The BillingLedger contract: one durable charge per connection, and its usage row."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

import pytest

from nember_core.errors import AlreadyExists
from nember_core.records import ConnectionUsage, utcnow

from ..stores import StoreContract, shared


def usage(connection_id: str, account_id: str = "acct_1", **fields) -> ConnectionUsage:
    return ConnectionUsage(connection_id=connection_id, account_id=account_id, key_id="key_1",
                           remote="203.0.113.7", opened_at=fields.pop("opened_at", utcnow()),
                           **fields)


def ended(row: ConnectionUsage, code: int, reason: str) -> ConnectionUsage:
    row.closed_at, row.close_code, row.close_reason = utcnow(), code, reason
    return row


class BillingLedgerContract(StoreContract):
    """The billing contract; subclass it with ``plugin_name`` and ``options``."""

    role = "billing"
    pytestmark = pytest.mark.asyncio

    async def test_a_connection_is_charged_once_with_an_open_usage_row(self, store):
        charge = await store.charge(usage("c1"), Decimal("0.25"), "EUR")
        assert (charge.connection_id, charge.amount, charge.currency) == ("c1", Decimal("0.25"),
                                                                          "EUR")
        with pytest.raises(AlreadyExists):
            await store.charge(usage("c1"), Decimal("0.25"), "EUR")
        assert [(c.connection_id, c.amount) for c in await store.charges("acct_1")] == [
            ("c1", Decimal("0.25"))]
        (row,) = await store.usage("acct_1")
        assert (row.connection_id, row.remote, row.closed_at) == ("c1", "203.0.113.7", None)

    async def test_amounts_keep_every_decimal(self, store):
        await store.charge(usage("c1"), Decimal("0.000125"), "USD")
        assert (await store.charges("acct_1"))[0].amount == Decimal("0.000125")

    async def test_accounts_see_only_their_own_in_time_order(self, store):
        for i in range(3):
            await store.charge(usage(f"a{i}"), Decimal(1), "USD")
            await store.charge(usage(f"b{i}", account_id="acct_2"), Decimal(1), "USD")
        assert [c.connection_id for c in await store.charges("acct_1")] == ["a0", "a1", "a2"]
        assert [u.connection_id for u in await store.usage("acct_2")] == ["b0", "b1", "b2"]
        assert await store.charges("acct_3") == [] and await store.usage("acct_3") == []

    async def test_the_end_of_a_connection_is_recorded(self, store):
        await store.charge(usage("c1"), Decimal(1), "USD")
        await store.record_usage(ended(usage("c1", predictions=7, errors=2), 1000,
                                       "closed by client"))
        (row,) = await store.usage("acct_1")
        assert (row.close_code, row.close_reason, row.predictions, row.errors) == (
            1000, "closed by client", 7, 2)
        assert row.closed_at is not None

    async def test_concurrent_charges_all_land_and_failing_ones_take_none_with_them(self, store):
        await store.charge(usage("taken"), Decimal(1), "USD")
        calls = [store.charge(usage(f"c{i}"), Decimal(1), "USD") for i in range(40)]
        calls += [store.charge(usage("taken"), Decimal(1), "USD") for _ in range(40)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert sum(isinstance(r, AlreadyExists) for r in results) == 40
        assert not [r for r in results if isinstance(r, Exception)
                    and not isinstance(r, AlreadyExists)]
        charged = {c.connection_id for c in await store.charges("acct_1")}
        assert charged == {u.connection_id for u in await store.usage("acct_1")}
        assert charged == {"taken", *(f"c{i}" for i in range(40))}

    async def test_unclosed_rows_are_paged_by_age(self, store):
        start = utcnow() - timedelta(minutes=10)
        for i in range(5):
            await store.charge(usage(f"u{i}", opened_at=start + timedelta(seconds=i)),
                               Decimal(1), "USD")
        await store.record_usage(ended(usage("u2", opened_at=start), 1000, "closed by client"))
        before = start + timedelta(seconds=4)  # u4 is not old enough
        first = await store.unclosed_usage(before, 2)
        rest = await store.unclosed_usage(before, 10, first[-1].opened_at)
        assert [u.connection_id for u in first] == ["u0", "u1"]
        assert [u.connection_id for u in rest] == ["u3"]

    async def test_a_guessed_end_never_overwrites_a_recorded_one(self, store):
        await store.charge(usage("done"), Decimal(1), "USD")
        await store.charge(usage("dead"), Decimal(1), "USD")
        await store.record_usage(ended(usage("done"), 1000, "closed by client"))
        assert not await store.close_abandoned(ended(usage("done"), 1006, "server process ended"))
        assert await store.close_abandoned(ended(usage("dead"), 1006, "server process ended"))
        rows = {u.connection_id: u.close_code for u in await store.usage("acct_1")}
        assert rows == {"done": 1000, "dead": 1006}

    async def test_charges_are_durable_and_seen_by_every_process(self, open_store, provider):
        shared(provider)
        one = await open_store("node-1")
        await one.charge(usage("c1"), Decimal(1), "USD")
        await open_store.close(one)  # what a restart, or another node, finds
        two = await open_store("node-2")
        assert [c.connection_id for c in await two.charges("acct_1")] == ["c1"]
        with pytest.raises(AlreadyExists):
            await two.charge(usage("c1"), Decimal(1), "USD")

    async def test_an_open_store_answers_a_ping(self, store):
        await store.ping()  # what GET /readyz asks of every configured store
