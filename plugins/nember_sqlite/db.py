"""SQLite databases that several processes (servers, workers, the CLI) share safely, and that
a store's coroutines share one transaction at a time."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import TypeVar

import aiosqlite

from nember_core.plugin_api import Together

BUSY_TIMEOUT_SECONDS = 30
PARAMETERS = 500  # per statement: well under SQLite's limit
Statements = Sequence[tuple[str, Sequence]]  # (SQL, its arguments), in order
Item = TypeVar("Item")


def chunks(items: Sequence[Item], size: int = PARAMETERS) -> Iterator[Sequence[Item]]:
    """``items`` in pieces of ``size``: one statement's worth of parameters each."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def marks(count: int) -> str:
    """``?,?,...``: ``count`` parameters, for an ``IN (...)``."""
    return ",".join("?" * count)


async def connect(path: Path, schema: str, durable: bool = True,
                  migrations: Sequence[str] = ()) -> aiosqlite.Connection:
    """Open ``path`` (created with ``schema`` if new, then upgraded by ``migrations``) in WAL
    mode.

    WAL lets readers and one writer from other processes work at once. ``durable``
    (synchronous=FULL) makes a commit survive power loss, which billing's "durable before
    answering" needs; live state only (not durable) skips the fsync: a crash leaves nothing
    live to keep.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(_initialize, path, schema, migrations)
    # No implicit BEGIN: a transaction is either ``Database.transaction``'s explicit one or a
    # single statement (``Database.write``), committed as it runs.
    db = await aiosqlite.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
    try:
        await db.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
        await db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_SECONDS * 1000}")
        await db.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        await db.close()  # its thread would keep the process alive
        raise
    return db


def _initialize(path: Path, schema: str, migrations: Sequence[str]) -> None:
    """WAL mode, the schema and its migrations, one process at a time: a new file starts in
    rollback-journal mode, where two processes setting it up at once can deadlock (SQLite
    then fails one of them at once, whatever the busy timeout).

    ``schema`` is the first version's; migration N (from 1) takes a file from version N-1 to
    N, each in one transaction with its number (SQLite's ``user_version``), so a file of any
    version, new or old, ends at the newest."""
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(schema)
            (version,) = db.execute("PRAGMA user_version").fetchone()
            for number, script in enumerate(migrations, start=1):
                if number > version:
                    db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
            db.commit()


class Database:
    """A store's one connection, shared by its coroutines: one transaction at a time.

    aiosqlite runs each call on the connection's thread in order, but a transaction spans
    several calls, and every coroutine's calls interleave on the one connection. Without the
    lock, one coroutine's rollback would take another's writes with it (a charge lost after
    its bot heard ``Valid API key.``) and one's commit would commit another's half-done ones
    (a charge without its usage row, if the process dies next). Every transaction also rolls
    back on any exit but a normal one, cancellation included: left open, it would fail every
    later one ("cannot start a transaction within a transaction").
    """

    def __init__(self, connection: aiosqlite.Connection):
        self._db = connection
        self._lock = asyncio.Lock()
        # A duplicate fails its own job: the batch is run again job by job.
        self._commits = Together(self._run, split_on=(sqlite3.IntegrityError,))

    @classmethod
    async def open(cls, path: Path, schema: str, durable: bool = True,
                   migrations: Sequence[str] = ()) -> Database:
        return cls(await connect(path, schema, durable, migrations))

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection, inside a write transaction (BEGIN IMMEDIATE: it takes SQLite's
        write lock at once, so it never fails half-way to upgrade a read)."""
        async with self._lock:
            try:
                # Inside the try: cancelled while waiting, the BEGIN still runs on the
                # connection's thread, and must be rolled back (a no-op if it never ran).
                await self._db.execute("BEGIN IMMEDIATE")
                yield self._db
            except BaseException:
                await self._db.rollback()
                raise
            await self._db.commit()

    async def commit_together(self, statements: Statements) -> None:
        """Run ``statements`` in one transaction with those that other coroutines ask for
        meanwhile: one commit, one fsync, for a storm of accepts; each caller returns once
        its own are durable; a bad job (a duplicate key) fails only its own caller."""
        await self._commits(statements)

    async def _run(self, jobs: list[Statements]) -> list[None]:
        """Every job's statements in one transaction, one ``executemany`` per SQL text (in
        the order each first appears: a row's parent before it)."""
        grouped: dict[str, list[Sequence]] = {}
        for statements in jobs:
            for sql, args in statements:
                grouped.setdefault(sql, []).append(args)
        async with self.transaction() as db:
            for sql, rows in grouped.items():
                await db.executemany(sql, rows)
        return [None] * len(jobs)

    async def write(self, sql: str, args: Sequence = ()) -> list[tuple]:
        """One statement as a transaction of its own, in one trip to the connection's
        thread; the rows it returns (``RETURNING``). Every read the statement makes is inside
        its write lock, so a conditional INSERT ... SELECT counts and inserts atomically
        across processes."""
        async with self._lock:
            return list(await self._db.execute_fetchall(sql, args))

    async def read(self, sql: str, args: Iterable = ()) -> list[tuple]:
        """The rows of one query (in one trip to the connection's thread), never inside
        another coroutine's unfinished transaction."""
        async with self._lock:
            return list(await self._db.execute_fetchall(sql, tuple(args)))

    async def ping(self) -> None:
        await self.read("SELECT 1")

    async def close(self) -> None:
        async with self._lock:
            await self._db.close()
