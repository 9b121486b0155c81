"""The SQLite connection registry, two instances on one file (as two server processes are).

The server-level behaviour (limits, listing, closing across ``--workers``) is in
test_workers.py; here, what is hard to provoke through real processes: an instance that
stops beating is forgotten with its connections, and one judged gone during a long stall
registers its connections again.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import datetime, timezone

import attrs
from nember_sqlite.registry import SCHEMA, STALE_AFTER, SqliteConnectionRegistry

HEARTBEAT = 0.05


@attrs.define
class Conn:
    """What the registry reads of a LiveConnection, and its close."""

    id: str
    account_id: str = "acct_1"
    key_id: str = "key_1"
    key_name: str = "default"
    remote: str = "127.0.0.1"
    opened_at: datetime = attrs.field(factory=lambda: datetime.now(timezone.utc))
    predictions: int = 0
    errors: int = 0
    last_request_at: float | None = None
    closed_with: tuple | None = None

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)


async def _add(registry, conn: Conn, limit: int) -> bool:
    return await registry.add(conn, limit, conn.close)


async def _forgotten_by(registry, gone) -> None:
    """What ``registry``'s heartbeat does once ``gone`` has been silent too long."""
    await registry._db.transaction(
        lambda db: registry._forget(db, "instance = ?", (gone._instance,)))


async def _pair(tmp_path):
    path = tmp_path / "connections.sqlite3"
    return (await SqliteConnectionRegistry.open(path, "a", HEARTBEAT),
            await SqliteConnectionRegistry.open(path, "b", HEARTBEAT))


async def test_limits_listing_and_closing_span_instances(tmp_path):
    a, b = await _pair(tmp_path)
    try:
        one, two, three = Conn("c1"), Conn("c2"), Conn("c3")
        assert await _add(a, one, 2) and await _add(b, two, 2)
        assert not await _add(a, three, 2)  # counted across both
        one.predictions, one.last_request_at = 5, 1700000000.0
        await asyncio.sleep(HEARTBEAT * 3)
        listed = {c.id: c for c in await b.list("acct_1")}
        assert set(listed) == {"c1", "c2"}
        assert listed["c2"] is two  # b's own: the live object
        assert (listed["c1"].node, listed["c1"].predictions) == ("a", 5)  # a's, as published
        assert await b.close_connection("c1", 4000, "closed by owner")
        await asyncio.sleep(HEARTBEAT * 3)
        assert one.closed_with == (4000, "closed by owner")  # a picked the request up
        await a.remove(one)
        assert await _add(b, three, 2)  # the slot is free again
        assert not await b.close_connection("nope", 4000, "closed by owner")
    finally:
        await a.close()
        await b.close()


async def test_an_instance_that_stops_beating_is_forgotten(tmp_path):
    a, b = await _pair(tmp_path)
    try:
        assert await _add(a, Conn("c1"), 1)
        a._beating.cancel()  # as if killed: no more heartbeats, no clean close
        assert not await _add(b, Conn("c2"), 1)
        await asyncio.sleep(HEARTBEAT * (STALE_AFTER + 3))
        assert await b.list("acct_1") == []
        assert await _add(b, Conn("c2"), 1)
    finally:
        await b.close()
        await a._db.close()


async def test_an_instance_forgotten_during_a_stall_registers_again(tmp_path):
    a, b = await _pair(tmp_path)
    try:
        assert await _add(a, Conn("c1"), 5)
        await _forgotten_by(b, a)  # what b does once a has been silent too long
        assert await b.list("acct_1") == []
        await asyncio.sleep(HEARTBEAT * 3)  # a's next heartbeat notices
        assert [c.id for c in await b.list("acct_1")] == ["c1"]
    finally:
        await a.close()
        await b.close()


async def test_a_cancelled_call_leaves_no_transaction_open(tmp_path):
    """A handler cancelled mid-remove (a lost peer, a shutdown past its timeout) must not
    leave the shared connection inside a transaction, failing every later connection."""
    a, b = await _pair(tmp_path)
    try:
        one = Conn("c1")
        assert await _add(a, one, 5)
        for _ in range(20):  # cancel it at different points of its transaction
            removing = asyncio.create_task(a.remove(one))
            await asyncio.sleep(0)
            removing.cancel()
            await asyncio.gather(removing, return_exceptions=True)
            assert await _add(a, one, 5)
        assert [c.id for c in await b.list("acct_1")] == ["c1"]
    finally:
        await a.close()
        await b.close()


async def test_a_storm_of_connections_each_gets_its_accounts_limit_in_few_statements(
        tmp_path, monkeypatch):
    """Connections accepted at once on two instances are admitted in a few statements, and
    still exactly up to each account's limit across both."""
    from nember_sqlite.db import Database

    statements = 0
    real = Database.write

    async def counted(self, sql, args=()):
        nonlocal statements
        statements += sql.startswith("INSERT")
        return await real(self, sql, args)

    a, b = await _pair(tmp_path)
    monkeypatch.setattr(Database, "write", counted)
    try:
        conns = [Conn(f"c{i}", account_id=f"acct_{i % 3}") for i in range(300)]
        limits = {"acct_0": 7, "acct_1": 40, "acct_2": 500}
        added = await asyncio.gather(*(
            _add(a if i % 2 else b, conn, limits[conn.account_id])
            for i, conn in enumerate(conns)))
        admitted = {account: [c.id for c, ok in zip(conns, added, strict=True)
                              if ok and c.account_id == account] for account in limits}
        assert {account: len(ids) for account, ids in admitted.items()} == {
            "acct_0": 7, "acct_1": 40, "acct_2": 100}
        for account, ids in admitted.items():
            assert sorted(c.id for c in await a.list(account)) == sorted(ids)
        assert statements < 30, f"{statements} statements for 300 connections"
    finally:
        await a.close()
        await b.close()


async def test_a_connection_whose_admission_is_cancelled_is_not_left_listed(tmp_path):
    """A handler cancelled while its connection's batch is being admitted (a shutdown past
    its timeout) never holds the connection: it must not stay listed, counting against the
    account's limit."""
    a, b = await _pair(tmp_path)
    try:
        for step in range(6):  # cancel it at different points of its batch
            adding = asyncio.create_task(_add(a, Conn(f"c{step}"), 5))
            for _ in range(step):
                await asyncio.sleep(0)
            adding.cancel()
            await asyncio.gather(adding, return_exceptions=True)
        await asyncio.sleep(0.3)  # the batches they were in, and the unlisting, run on
        assert await b.list("acct_1") == []
        assert [await _add(a, Conn(f"d{i}"), 5) for i in range(6)] == [True] * 5 + [False]
    finally:
        await a.close()
        await b.close()


async def test_the_limit_stays_exact_through_removals_a_forgotten_instance_and_a_rejoin(
        tmp_path):
    """Admission counts an account's live connections from per-instance counts that
    triggers keep: every way a connection leaves or comes back must move them."""
    a, b = await _pair(tmp_path)
    try:
        on_a = [Conn(f"a{i}") for i in range(3)]
        assert [await _add(a, conn, 4) for conn in on_a] == [True] * 3
        await a.remove(on_a[0])
        assert await _add(b, Conn("b0"), 4) and await _add(b, Conn("b1"), 4)
        assert not await _add(b, Conn("b2"), 4)  # a1, a2, b0, b1
        await _forgotten_by(b, a)  # a judged gone: its two no longer count
        assert await _add(b, Conn("b2"), 4)
        await asyncio.sleep(HEARTBEAT * 3)  # a's heartbeat lists its two again
        assert sorted(c.id for c in await b.list("acct_1")) == ["a1", "a2", "b0", "b1", "b2"]
        assert not await _add(b, Conn("b3"), 5)  # the rejoined two count again
        await b.remove(Conn("b0"))
        assert await _add(b, Conn("b3"), 5) and not await _add(a, Conn("a3"), 5)
    finally:
        await a.close()
        await b.close()


async def test_a_registry_file_from_before_the_counts_keeps_its_live_connections_counted(
        tmp_path):
    """A file written by a server of the version before (no counts table) while its
    connections are live: opening it fills the counts from them."""
    path = tmp_path / "connections.sqlite3"
    with sqlite3.connect(path) as old:
        old.execute("PRAGMA journal_mode=WAL")
        old.executescript(SCHEMA)
        old.execute("INSERT INTO instances VALUES ('old:1', ?)", (time.time(),))
        old.executemany(
            "INSERT INTO connections (id, instance, node, account_id, key_id, key_name, "
            "remote, opened_at) VALUES (?, 'old:1', 'old', 'acct_1', 'key_1', 'default', "
            "'127.0.0.1', '2026-11-29T00:00:00+00:00')", [("o1",), ("o2",)])
    old.close()
    registry = await SqliteConnectionRegistry.open(path, "new", HEARTBEAT)
    try:
        assert await _add(registry, Conn("n1"), 3)
        assert not await _add(registry, Conn("n2"), 3)  # o1, o2 and n1
    finally:
        await registry.close()


async def test_a_connection_listed_again_by_another_instance_counts_for_that_one(tmp_path):
    a, b = await _pair(tmp_path)
    try:
        assert await _add(a, Conn("c1"), 5)
        assert await _add(b, Conn("c1"), 5)  # listed already: it moves to b
        await _forgotten_by(b, a)
        assert [c.id for c in await b.list("acct_1")] == ["c1"]
        assert not await _add(b, Conn("c2"), 1)  # c1, now b's, still counts
    finally:
        await a.close()
        await b.close()
