"""A connection registry in SQLite, shared by every server process on this machine.

``nember serve --workers N`` runs N processes behind one port, and several servers may share
a ``data_dir``; each process is an instance here (its node name, shown in listings, plus a
random id). An instance registers its connections (the per-account limit is counted across
all instances in one transaction), lists everyone's, and closes another's connection by
leaving a request that instance picks up within one heartbeat. Each instance writes a
heartbeat and its connections' counters every ``heartbeat`` seconds; one silent for
``STALE_AFTER`` heartbeats (killed outright) is forgotten with its connections.

The file holds only live state, so it is written without fsync: after a power loss there
are no live connections to remember anyway.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from functools import partial
from pathlib import Path

import structlog

from nember_core.plugin_api import CloseConnection, LiveConnection, Together

from .db import PARAMETERS, Database, chunks, marks

log = structlog.get_logger("nember.registry")

STALE_AFTER = 5  # heartbeats

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    instance TEXT PRIMARY KEY,
    seen_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS connections (
    id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    node TEXT NOT NULL,
    account_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_name TEXT NOT NULL,
    remote TEXT NOT NULL,
    opened_at TEXT NOT NULL,
    predictions INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    last_request_at REAL
);
CREATE INDEX IF NOT EXISTS connections_account ON connections(account_id);
CREATE INDEX IF NOT EXISTS connections_instance ON connections(instance);
CREATE TABLE IF NOT EXISTS close_requests (
    connection_id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    code INTEGER NOT NULL,
    reason TEXT NOT NULL
);
-- A connection's pending close request leaves with it: unlisting one is then one statement.
CREATE TRIGGER IF NOT EXISTS connection_gone AFTER DELETE ON connections BEGIN
    DELETE FROM close_requests WHERE connection_id = OLD.id;
END;
"""
_COLUMNS = "id, instance, node, account_id, key_id, key_name, remote, opened_at"
INSERT = f"INSERT OR IGNORE INTO connections ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
MIGRATIONS = [
    # 1: each account's live connections per instance, kept by triggers, so that admitting a
    # connection reads a few rows (one per instance), not every live connection of its
    # account: with 1,000 live, 19 instead of 181-213 µs per admission and removal.
    """
    CREATE TABLE live_counts (
        account_id TEXT NOT NULL,
        instance TEXT NOT NULL,
        connections INTEGER NOT NULL,
        PRIMARY KEY (account_id, instance)
    ) WITHOUT ROWID;
    INSERT INTO live_counts
        SELECT account_id, instance, COUNT(*) FROM connections GROUP BY account_id, instance;
    CREATE TRIGGER connection_counted AFTER INSERT ON connections BEGIN
        INSERT INTO live_counts VALUES (NEW.account_id, NEW.instance, 1)
            ON CONFLICT (account_id, instance) DO UPDATE SET connections = connections + 1;
    END;
    CREATE TRIGGER connection_uncounted AFTER DELETE ON connections BEGIN
        UPDATE live_counts SET connections = connections - 1
            WHERE account_id = OLD.account_id AND instance = OLD.instance;
    END;
    CREATE TRIGGER connection_moved AFTER UPDATE OF instance ON connections BEGIN
        UPDATE live_counts SET connections = connections - 1
            WHERE account_id = OLD.account_id AND instance = OLD.instance;
        INSERT INTO live_counts VALUES (NEW.account_id, NEW.instance, 1)
            ON CONFLICT (account_id, instance) DO UPDATE SET connections = connections + 1;
    END
    """,
]
# Rows of connections, each with how many of its account's come before it in the batch and
# its limit: those whose account's live connections (of instances alive), with those before
# it, are under the limit go in. SQLite runs the whole SELECT, every row's count, before it
# inserts a row (it does so for a table with row triggers); were it not to, the batch would
# only admit fewer.
ADDED_UNDER_LIMITS = (
    f"INSERT INTO connections ({_COLUMNS}) "
    "SELECT column1, column2, column3, column4, column5, column6, column7, column8 "
    "FROM (VALUES {rows}) AS batch WHERE column9 + (SELECT COALESCE(SUM(connections), 0) "
    "FROM live_counts JOIN instances USING (instance) "
    "WHERE account_id = batch.column4 AND seen_at >= ?) "
    "< column10 ON CONFLICT (id) DO UPDATE SET instance = excluded.instance RETURNING id"
)  # (a connection listed already, by a rejoin, stays listed)
ADD_FIELDS = 10  # per row of the batch: the 8 columns, the rank in the batch, the limit
ADD_ROW = f"({marks(ADD_FIELDS)})"


class SqliteConnectionRegistry:
    def __init__(self, db: Database, node: str, heartbeat: float):
        self._db = db
        self._node = node
        self._instance = f"{node}:{secrets.token_hex(6)}"
        self._heartbeat = heartbeat
        self._local: dict[str, LiveConnection] = {}  # this node's connections
        self._closers: dict[str, CloseConnection] = {}  # ...and how to close each
        self._reported: dict[str, tuple] = {}  # their counters as last written
        self._unremoved: set[str] = set()  # ended connections a failed write left listed
        self._closing: set[asyncio.Task] = set()
        self._unlisting: set[asyncio.Future] = set()  # admitted for a caller who left
        self._beating: asyncio.Task | None = None
        # Connections that come or go together (a storm of reconnects) share a statement.
        self._admit = Together(self._admit_now)
        self._unlist = Together(self._delete_now)

    @classmethod
    async def open(cls, path: Path, node: str, heartbeat: float = 1.0):
        registry = cls(await Database.open(path, SCHEMA, durable=False, migrations=MIGRATIONS),
                       node, heartbeat)
        try:
            await registry._db.write("INSERT INTO instances (instance, seen_at) VALUES (?, ?)",
                                     (registry._instance, time.time()))
        except BaseException:
            await registry._db.close()
            raise
        registry._beating = asyncio.create_task(registry._beat_forever())
        return registry

    def _row(self, conn: LiveConnection) -> tuple:
        return (conn.id, self._instance, self._node, conn.account_id, conn.key_id,
                conn.key_name, conn.remote, conn.opened_at.isoformat())

    def _alive_since(self) -> float:
        return time.time() - STALE_AFTER * self._heartbeat

    async def add(self, conn: LiveConnection, limit: int, close: CloseConnection) -> bool:
        admitted = self._admit.submit((conn, limit))
        try:
            if not await asyncio.shield(admitted):
                return False
        except asyncio.CancelledError:  # its batch goes on: what it lists, unlist
            admitted.add_done_callback(partial(self._unlist_if_admitted, conn))
            raise
        self._local[conn.id] = conn
        self._closers[conn.id] = close
        return True

    def _unlist_if_admitted(self, conn: LiveConnection, admitted: asyncio.Future) -> None:
        if not admitted.cancelled() and admitted.exception() is None and admitted.result():
            task = asyncio.ensure_future(self.remove(conn))
            self._unlisting.add(task)
            task.add_done_callback(self._unlisting.discard)

    async def _admit_now(self, batch: list[tuple[LiveConnection, int]]) -> list[bool]:
        """A storm's connections in one statement per ``PARAMETERS``: the count and the
        inserts under one write lock, so limits hold across processes."""
        added: set[str] = set()
        for part in chunks(batch, PARAMETERS // ADD_FIELDS):
            rows: list = []
            before: Counter[str] = Counter()  # the account's connections earlier in the batch
            for conn, limit in part:
                rows += (*self._row(conn), before[conn.account_id], limit)
                before[conn.account_id] += 1
            sql = ADDED_UNDER_LIMITS.format(rows=",".join([ADD_ROW] * len(part)))
            returned = await self._db.write(sql, (*rows, self._alive_since()))
            added.update(conn_id for (conn_id,) in returned)
        return [conn.id in added for conn, _ in batch]

    async def remove(self, conn: LiveConnection) -> None:
        self._local.pop(conn.id, None)
        self._closers.pop(conn.id, None)
        self._reported.pop(conn.id, None)
        try:
            await self._unlist(conn.id)
        except Exception as exc:  # a locked or full disk: unlisted by the next heartbeat
            self._unremoved.add(conn.id)
            log.error("registry.remove_failed", error=str(exc))

    async def _delete_now(self, connection_ids: list[str]) -> list[None]:
        for chunk in chunks(connection_ids):
            await self._db.write(f"DELETE FROM connections WHERE id IN ({marks(len(chunk))})",
                                 chunk)
        return [None] * len(connection_ids)

    async def list(self, account_id: str) -> list[LiveConnection]:
        rows = await self._db.read(
            "SELECT id, node, account_id, key_id, key_name, remote, opened_at, predictions, "
            "errors, last_request_at FROM connections JOIN instances USING (instance) "
            "WHERE account_id = ? AND seen_at >= ?",
            (account_id, self._alive_since()),
        )
        found = []
        for row in rows:
            local = self._local.get(row[0])
            if local is not None:  # this node's own: its counters are current
                found.append(local)
            else:
                (conn_id, node, account, key_id, key_name, remote, opened_at, predictions,
                 errors, last_request_at) = row
                found.append(LiveConnection(
                    id=conn_id, account_id=account, key_id=key_id, key_name=key_name,
                    remote=remote, node=node, opened_at=datetime.fromisoformat(opened_at),
                    predictions=predictions, errors=errors, last_request_at=last_request_at,
                ))
        return found

    async def close_connection(self, connection_id: str, code: int, reason: str) -> bool:
        if connection_id in self._closers:
            self._start_closing(self._closers[connection_id], code, reason)
            return True
        alive_since = self._alive_since()

        def request(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT instance FROM connections JOIN instances USING (instance) "
                "WHERE id = ? AND seen_at >= ?",
                (connection_id, alive_since),
            ).fetchone()
            if row is None:
                return False
            db.execute(
                "INSERT OR REPLACE INTO close_requests (connection_id, instance, code, reason) "
                "VALUES (?, ?, ?, ?)",
                (connection_id, row[0], code, reason),
            )
            return True
        return await self._db.transaction(request)

    async def live_among(self, connection_ids: Iterable[str]) -> set[str]:
        ids = list(set(connection_ids))
        live: set[str] = set()
        for chunk in chunks(ids):
            rows = await self._db.read(
                "SELECT id FROM connections JOIN instances USING (instance) "
                f"WHERE id IN ({marks(len(chunk))}) AND seen_at >= ?",
                (*chunk, self._alive_since()),
            )
            live.update(row[0] for row in rows)
        return live

    def _start_closing(self, close: CloseConnection, code: int, reason: str) -> None:
        # Start the close handshake and return: a slow peer must not hold up the caller.
        task = asyncio.create_task(close(code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            try:
                await self._beat()
            except Exception as exc:  # a locked or full disk: try again next beat
                log.error("registry.heartbeat_failed", error=str(exc))

    async def _beat(self) -> None:
        """Say this instance is alive, publish its counters, act on close requests, forget
        the instances that stopped beating."""
        changed = []
        for conn_id, conn in list(self._local.items()):
            counters = (conn.predictions, conn.errors, conn.last_request_at)
            if self._reported.get(conn_id) != counters:
                self._reported[conn_id] = counters
                changed.append((*counters, conn_id))
        unremoved = list(self._unremoved)
        held = list(self._local.values())  # as of now: the loop changes the dict meanwhile

        def beat(db: sqlite3.Connection) -> tuple[bool, list]:
            now = time.time()
            rejoined = db.execute("UPDATE instances SET seen_at = ? WHERE instance = ?",
                                  (now, self._instance)).rowcount == 0
            if rejoined:
                # Judged gone (this loop stalled past STALE_AFTER heartbeats) and forgotten:
                # register again, with every connection this instance still holds.
                db.execute("INSERT INTO instances (instance, seen_at) VALUES (?, ?)",
                           (self._instance, now))
                db.executemany(INSERT, [self._row(c) for c in held])
            if changed:
                db.executemany(
                    "UPDATE connections SET predictions = ?, errors = ?, last_request_at = ? "
                    "WHERE id = ?", changed,
                )
            requests = db.execute(
                "DELETE FROM close_requests WHERE instance = ? "
                "RETURNING connection_id, code, reason",
                (self._instance,),
            ).fetchall()
            if unremoved:
                _delete(db, unremoved)
            self._forget(db, "seen_at < ?", (now - STALE_AFTER * self._heartbeat,))
            return rejoined, requests
        rejoined, requests = await self._db.transaction(beat)
        if rejoined:
            log.warning("registry.rejoined", connections=len(held))
        self._unremoved.difference_update(unremoved)
        for conn_id, code, reason in requests:
            close = self._closers.get(conn_id)
            if close is not None:
                self._start_closing(close, code, reason)

    @staticmethod
    def _forget(db: sqlite3.Connection, where: str, args: tuple) -> None:
        """Delete the matching instances with their connections and requests (inside a
        transaction)."""
        gone = f"SELECT instance FROM instances WHERE {where}"
        db.execute(f"DELETE FROM connections WHERE instance IN ({gone})", args)
        db.execute(f"DELETE FROM live_counts WHERE instance IN ({gone})", args)
        db.execute(f"DELETE FROM close_requests WHERE instance IN ({gone})", args)
        db.execute(f"DELETE FROM instances WHERE {where}", args)

    async def ping(self) -> None:
        await self._db.ping()

    async def close(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
        for unlisting in self._unlisting:
            unlisting.cancel()  # its row goes with the instance's
        await self._db.transaction(partial(self._forget, where="instance = ?",
                                           args=(self._instance,)))
        await self._db.close()


def _delete(db: sqlite3.Connection, connection_ids: list[str]) -> None:
    """Unlist these connections, and so their pending close requests (in a transaction)."""
    db.execute(f"DELETE FROM connections WHERE id IN ({marks(len(connection_ids))})",
               connection_ids)
