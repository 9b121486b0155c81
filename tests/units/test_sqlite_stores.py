"""The SQLite stores under concurrency: each charge is its own atomic unit."""

from __future__ import annotations

import asyncio
import sqlite3
from decimal import Decimal

import pytest
from nember_sqlite.billing import SqliteBillingLedger
from nember_sqlite.key_store import SqliteKeyStore

from nember_core.errors import AlreadyExists
from nember_core.records import ConnectionUsage, utcnow


def _usage(connection_id: str) -> ConnectionUsage:
    return ConnectionUsage(connection_id=connection_id, account_id="acct_1", key_id="key_1",
                           remote="127.0.0.1", opened_at=utcnow())


async def test_a_failing_charge_never_takes_another_connections_charge_with_it(tmp_path):
    ledger = await SqliteBillingLedger.open(tmp_path / "billing.sqlite3")
    try:
        await ledger.charge(_usage("taken"), Decimal("0.01"), "USD")
        # Fresh charges interleaved with ones that fail (already charged) and roll back.
        calls = []
        for i in range(60):
            calls.append(ledger.charge(_usage(f"c{i}"), Decimal("0.01"), "USD"))
            calls.append(ledger.charge(_usage("taken"), Decimal("0.01"), "USD"))
        results = await asyncio.gather(*calls, return_exceptions=True)
        failed = [r for r in results if isinstance(r, Exception)]
        assert len(failed) == 60 and all(isinstance(r, AlreadyExists) for r in failed)
    finally:
        await ledger.close()
    reopened = await SqliteBillingLedger.open(tmp_path / "billing.sqlite3")  # what is durable
    try:
        charged = {c.connection_id for c in await reopened.charges("acct_1")}
        with_usage = {u.connection_id for u in await reopened.usage("acct_1")}
    finally:
        await reopened.close()
    assert charged == with_usage == {"taken", *(f"c{i}" for i in range(60))}


async def test_a_cancelled_charge_leaves_nothing_half_done(tmp_path):
    ledger = await SqliteBillingLedger.open(tmp_path / "billing.sqlite3")
    try:
        for i in range(20):  # cancelled at different points of its transaction
            charging = asyncio.create_task(ledger.charge(_usage(f"x{i}"), Decimal(1), "USD"))
            for _ in range(i % 4):
                await asyncio.sleep(0)
            charging.cancel()
            await asyncio.gather(charging, return_exceptions=True)
            await ledger.charge(_usage(f"ok{i}"), Decimal(1), "USD")
        charged = {c.connection_id for c in await ledger.charges("acct_1")}
        with_usage = {u.connection_id for u in await ledger.usage("acct_1")}
    finally:
        await ledger.close()
    assert charged == with_usage  # a charge is there with its usage row, or not at all
    assert {f"ok{i}" for i in range(20)} <= charged


async def test_a_call_after_close_fails_at_once_instead_of_waiting_forever(tmp_path):
    """A store's thread ends with its close: a late caller (a connection released during a
    shutdown) gets an error, never a wait for an answer no thread will give."""
    ledger = await SqliteBillingLedger.open(tmp_path / "billing.sqlite3")
    await ledger.close()
    await ledger.close()  # twice is harmless
    with pytest.raises(sqlite3.ProgrammingError):
        await asyncio.wait_for(ledger.charges("acct_1"), 5)


async def test_a_taken_email_never_undoes_another_accounts_creation(tmp_path):
    store = await SqliteKeyStore.open(tmp_path / "keys.sqlite3")
    try:
        await store.create_account("taken@example.com", "password-1")
        results = await asyncio.gather(*(
            store.create_account(email, "password-1")
            for i in range(10) for email in (f"new{i}@example.com", "taken@example.com")
        ), return_exceptions=True)
        assert sum(isinstance(r, AlreadyExists) for r in results) == 10
        for i in range(10):
            assert await store.account_by_email(f"new{i}@example.com") is not None
    finally:
        await store.close()


async def test_reads_and_writes_interleave_without_errors(tmp_path):
    store = await SqliteKeyStore.open(tmp_path / "keys.sqlite3")
    try:
        account = await store.create_account("a@example.com", "password-1")
        keys = await asyncio.gather(*(store.create_key(account.id, f"k{i}", "predict")
                                    for i in range(20)))
        revoked, kept = keys[:5], keys[5:]
        results = await asyncio.gather(*(store.revoke_key(k.key.id) for k in revoked),
                                       *(store.authenticate(k.secret) for k in kept))
        assert [r.id for r in results[5:]] == [k.key.id for k in kept]
        assert await store.revoked_among(k.key.id for k in keys) == {k.key.id for k in revoked}
    finally:
        await store.close()


async def test_a_cancel_request_survives_the_owners_next_progress_write(tmp_path):
    from nember_sqlite.job_board import SqliteJobBoard

    from nember_core.records import ModelKey, TrainingJob

    board = await SqliteJobBoard.open(tmp_path / "jobs.sqlite3")
    try:
        job = TrainingJob(id="job_1", account_id="acct_1", created_at=utcnow(),
                          key=ModelKey("acct_1", "s", "DecisionTree", "class"), state="running")
        await board.write([job], keep=10)
        assert await board.cancel_requested(["job_1"]) == set()
        await board.request_cancel("job_1")  # from another server process
        job.progress = 0.5
        await board.write([job], keep=10)  # the owner's next write of its progress
        assert await board.cancel_requested(["job_1", "job_2"]) == {"job_1"}
        assert (await board.read("job_1")).progress == 0.5
    finally:
        await board.close()


async def test_unclosed_usage_pages_by_age_and_a_recorded_end_wins(tmp_path):
    ledger = await SqliteBillingLedger.open(tmp_path / "billing.sqlite3")
    try:
        for i in range(5):
            await ledger.charge(_usage(f"u{i}"), Decimal(1), "USD")
        ended = _usage("u0")
        ended.closed_at, ended.close_code, ended.close_reason = utcnow(), 1000, "closed by client"
        await ledger.record_usage(ended)
        now = utcnow()
        first = await ledger.unclosed_usage(now, 2)
        rest = await ledger.unclosed_usage(now, 10, first[-1].opened_at)
        assert [u.connection_id for u in first + rest] == ["u1", "u2", "u3", "u4"]
        assert await ledger.unclosed_usage(first[0].opened_at, 10) == []  # none older
        # The sweep's guess never overwrites an end its own process recorded...
        guess = _usage("u0")
        guess.closed_at, guess.close_code, guess.close_reason = now, 1006, "server process ended"
        assert not await ledger.close_abandoned(guess)
        guess.connection_id = "u1"
        assert await ledger.close_abandoned(guess)
        # ...and that process's own record, arriving late, overwrites the guess.
        late = _usage("u1")
        late.closed_at, late.close_code, late.close_reason = now, 1000, "closed by client"
        await ledger.record_usage(late)
        rows = {u.connection_id: u for u in await ledger.usage("acct_1")}
    finally:
        await ledger.close()
    assert (rows["u0"].close_code, rows["u1"].close_code) == (1000, 1000)


async def test_charges_made_at_once_share_commits_and_each_waits_for_its_own(tmp_path,
                                                                          monkeypatch):
    """A storm of accepts: a few fsynced commits for 200 charges, not 200; and each charge
    returns only once another connection to the file sees it (committed)."""
    from nember_sqlite.db import Database

    transactions = 0
    real = Database.transaction

    def counted(self, function):
        nonlocal transactions
        transactions += 1
        return real(self, function)

    ledger = await SqliteBillingLedger.open(tmp_path / "billing.sqlite3")
    reader = await SqliteBillingLedger.open(tmp_path / "billing.sqlite3")
    monkeypatch.setattr(Database, "transaction", counted)

    async def charge(i: int) -> bool:
        await ledger.charge(_usage(f"c{i}"), Decimal("0.01"), "USD")
        return f"c{i}" in {c.connection_id for c in await reader.charges("acct_1")}

    try:
        seen = await asyncio.gather(*(charge(i) for i in range(200)))
    finally:
        await reader.close()
        await ledger.close()
    assert all(seen)
    assert transactions < 20, f"{transactions} commits for 200 charges"


def _counting_reads(monkeypatch) -> list[str]:
    from nember_sqlite.db import Database

    queries: list[str] = []
    real = Database.read

    async def counted(self, sql, args=()):
        queries.append(sql)
        return await real(self, sql, args)

    monkeypatch.setattr(Database, "read", counted)
    return queries


async def test_keys_looked_up_at_once_share_queries_and_each_gets_its_own(tmp_path,
                                                                         monkeypatch):
    """A storm of bots reconnecting: each secret answers with its own key (or none, if
    unknown or revoked), in a few queries rather than one per bot."""
    store = await SqliteKeyStore.open(tmp_path / "keys.sqlite3")
    try:
        account = await store.create_account("a@example.com", "pw-123456")
        keys = [await store.create_key(account.id, f"bot{i}", "trade") for i in range(3)]
        await store.revoke_key(keys[2].key.id)
        queries = _counting_reads(monkeypatch)
        secrets = [keys[i % 3].secret for i in range(150)] + ["nmb_unknown"] * 50
        found = await asyncio.gather(*(store.authenticate(s) for s in secrets))
    finally:
        await store.close()
    expected = [(keys[i % 3].key.id if i % 3 < 2 else None) for i in range(150)] + [None] * 50
    assert [key.id if key else None for key in found] == expected
    assert len(queries) < 20, f"{len(queries)} queries for 200 look-ups"
