"""Opening an SQLite database that several processes (servers, workers, the CLI) share safely."""

from __future__ import annotations

import asyncio
import fcntl
import sqlite3
from contextlib import closing
from pathlib import Path

import aiosqlite

BUSY_TIMEOUT_SECONDS = 30


async def connect(path: Path, schema: str, durable: bool = True) -> aiosqlite.Connection:
    """Open ``path`` (created with ``schema`` if new) in WAL mode.

    WAL lets readers and one writer from other processes work at once. ``durable``
    (synchronous=FULL) makes a commit survive power loss, which billing's "durable before
    answering" needs; live state only (not durable) skips the fsync: a crash leaves nothing
    live to keep.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(_initialize, path, schema)
    db = await aiosqlite.connect(path, timeout=BUSY_TIMEOUT_SECONDS)
    try:
        await db.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
        await db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_SECONDS * 1000}")
        await db.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        await db.close()  # its thread would keep the process alive
        raise
    return db


def _initialize(path: Path, schema: str) -> None:
    """WAL mode and the schema, one process at a time: a new file starts in rollback-journal
    mode, where two processes setting it up at once can deadlock (SQLite then fails one of
    them at once, whatever the busy timeout)."""
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(schema)
            db.commit()
