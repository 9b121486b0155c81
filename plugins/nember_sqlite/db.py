"""Opening an SQLite database that several processes (server, CLI, workers) share safely."""

from __future__ import annotations

from pathlib import Path

import aiosqlite


async def connect(path: Path, schema: str) -> aiosqlite.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(path, timeout=30)
    # WAL lets readers and one writer from other processes work at once; synchronous=FULL
    # makes a commit survive power loss, which billing's "durable before answering" needs.
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA synchronous=FULL")
    await db.execute("PRAGMA busy_timeout=30000")
    await db.execute("PRAGMA foreign_keys=ON")
    await db.executescript(schema)
    await db.commit()
    return db
