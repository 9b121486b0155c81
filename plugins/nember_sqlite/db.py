"""SQLite databases that several processes (servers, workers, the CLI) share safely: each one
a process opens is one connection on a thread of its own, and each call, a whole transaction
included, is one trip to that thread."""

from __future__ import annotations

import asyncio
import fcntl
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from functools import partial
from pathlib import Path
from queue import SimpleQueue
from typing import Any, TypeVar

from nember_core.plugin_api import Together

BUSY_TIMEOUT_SECONDS = 30
PARAMETERS = 500  # per statement: well under SQLite's limit
Statements = Sequence[tuple[str, Sequence]]  # (SQL, its arguments), in order
Item = TypeVar("Item")
Result = TypeVar("Result")


def chunks(items: Sequence[Item], size: int = PARAMETERS) -> Iterator[Sequence[Item]]:
    """``items`` in pieces of ``size``: one statement's worth of parameters each."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def marks(count: int) -> str:
    """``?,?,...``: ``count`` parameters, for an ``IN (...)``."""
    return ",".join("?" * count)


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
    """A store's one connection, used only on its own thread, where calls run one at a time
    in the order they were made.

    A transaction is a function of the connection, run there from its BEGIN to its COMMIT in
    one trip: no other call runs on the connection meanwhile, so no coroutine's rollback or
    commit can take another's writes with it (a charge lost after its bot heard ``Valid API
    key.``, a charge committed without its usage row). A caller cancelled while it waits
    leaves its transaction to run whole, never half. One trip per transaction, not one per
    statement, is what a busy server needs: each trip wakes the thread, which must then take
    the GIL from the event loop's thread, and back (on one core, about 25 µs of CPU and two
    context switches each).
    """

    def __init__(self, path: Path):
        self._path = path
        self._jobs: SimpleQueue = SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=f"sqlite {path.name}",
                                        daemon=True)
        self._connection: sqlite3.Connection | None = None
        self._closed = False
        # A duplicate fails its own job: the batch is run again job by job.
        self._commits = Together(self._run, split_on=(sqlite3.IntegrityError,))

    @classmethod
    async def open(cls, path: Path, schema: str, durable: bool = True,
                   migrations: Sequence[str] = ()) -> Database:
        """Open ``path`` (created with ``schema`` if new, then upgraded by ``migrations``) in
        WAL mode.

        WAL lets readers and one writer from other processes work at once. ``durable``
        (synchronous=FULL) makes a commit survive power loss, which billing's "durable
        before answering" needs; live state only (not durable) skips the fsync: a crash
        leaves nothing live to keep.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        db = cls(path)
        db._thread.start()
        try:
            db._connection = await db._call(partial(_connect, path, schema, durable, migrations))
        except BaseException:
            db._closed = True
            db._jobs.put(None)
            raise
        return db

    def _call(self, function: Callable[[], Result]) -> asyncio.Future[Result]:
        if self._closed:  # its thread is gone: no answer would ever come
            raise sqlite3.ProgrammingError(f"{self._path.name} is closed")
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._jobs.put((loop, done, function))
        return done

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, done, function = job
            try:
                result, error = function(), None
            except BaseException as exc:
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, done, result, error)
            except RuntimeError:  # its loop is closed: no one waits for the answer
                pass

    async def transaction(self, function: Callable[[sqlite3.Connection], Result]) -> Result:
        """``function(connection)`` inside one write transaction: BEGIN IMMEDIATE (SQLite's
        write lock at once, so it never fails half-way to upgrade a read), COMMIT when it
        returns, ROLLBACK when it raises."""
        return await self._call(partial(_in_transaction, self._connection, function))

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

        def run_all(db: sqlite3.Connection) -> None:
            for sql, rows in grouped.items():
                db.executemany(sql, rows)
        await self.transaction(run_all)
        return [None] * len(jobs)

    async def write(self, sql: str, args: Sequence = ()) -> list[tuple]:
        """One statement as a transaction of its own; the rows it returns (``RETURNING``).
        Every read the statement makes is inside its write lock, so a conditional INSERT ...
        SELECT counts and inserts atomically across processes."""
        return await self._call(partial(_rows, self._connection, sql, args))

    async def read(self, sql: str, args: Iterable = ()) -> list[tuple]:
        """The rows of one query, never inside another call's unfinished transaction."""
        return await self._call(partial(_rows, self._connection, sql, tuple(args)))

    async def ping(self) -> None:
        await self.read("SELECT 1")

    async def close(self) -> None:
        """Close the connection, after every call made before, and end its thread."""
        if self._closed:
            return
        try:
            await self._call(self._connection.close)  # type: ignore[union-attr]
        finally:
            self._closed = True
            self._jobs.put(None)


def _connect(path: Path, schema: str, durable: bool,
             migrations: Sequence[str]) -> sqlite3.Connection:
    _initialize(path, schema, migrations)
    # No implicit BEGIN: a transaction is either ``Database.transaction``'s explicit one or a
    # single statement, committed as it runs.
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
    try:
        db.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_SECONDS * 1000}")
        db.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        db.close()
        raise
    return db


def _in_transaction(db: sqlite3.Connection,
                    function: Callable[[sqlite3.Connection], Result]) -> Result:
    db.execute("BEGIN IMMEDIATE")
    try:
        result = function(db)
    except BaseException:
        db.rollback()
        raise
    db.commit()
    return result


def _rows(db: sqlite3.Connection, sql: str, args: Sequence) -> list[tuple]:
    return db.execute(sql, args).fetchall()


def _settle(done: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if done.done():  # its caller was cancelled: the work was done all the same
        return
    if error is None:
        done.set_result(result)
    else:
        done.set_exception(error)
