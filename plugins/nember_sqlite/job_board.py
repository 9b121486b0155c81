"""Training jobs' state in an SQLite file, so that every server process can answer for them.

Under ``nember serve --workers N`` the process that runs a job is not always the one a
dashboard's next ``GET /api/jobs/{id}`` reaches. The running process writes each job's state
here and rewrites the running ones at least every ``JOB_HEARTBEAT_SECONDS``; any process reads
them back. A running job whose process stopped writing for ``ORPHANED_AFTER`` seconds was lost
with that process, and reads as failed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from nember_core.plugin_api import JOB_HEARTBEAT_SECONDS, ModelKey, TrainingJob

from .db import Database

ORPHANED_AFTER = 6 * JOB_HEARTBEAT_SECONDS
LOST = "the server process running this job stopped; train the model again"

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    strat TEXT NOT NULL,
    family TEXT NOT NULL,
    model_type TEXT NOT NULL,
    created_at TEXT NOT NULL,
    state TEXT NOT NULL,
    progress REAL NOT NULL,
    stage TEXT NOT NULL,
    error TEXT,
    model_id TEXT,
    version INTEGER,
    finished_at TEXT,
    written_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at);
"""
MIGRATIONS = [
    # 1: cancelling a job from any server process
    "ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0",
]
COLUMNS = ("id", "account_id", "strat", "family", "model_type", "created_at", "state",
           "progress", "stage", "error", "model_id", "version", "finished_at")


# Every column but ``cancel_requested``, which only a cancel sets: the owner's next write of
# its progress must not undo it.
UPSERT = (
    f"INSERT INTO jobs ({', '.join(COLUMNS)}, written_at) "
    f"VALUES ({', '.join('?' * (len(COLUMNS) + 1))}) ON CONFLICT(id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in (*COLUMNS[1:], "written_at"))
)


class SqliteJobBoard:
    def __init__(self, db: Database):
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> SqliteJobBoard:
        # Progress, not money: no fsync.
        return cls(await Database.open(path, SCHEMA, durable=False, migrations=MIGRATIONS))

    async def write(self, jobs: Sequence[TrainingJob], keep: int) -> None:
        now = time.time()
        async with self._db.transaction() as db:
            await db.executemany(
                UPSERT,
                [(job.id, job.account_id, job.key.strat, job.key.family, job.key.model_type,
                  job.created_at.isoformat(), job.state, job.progress, job.stage, job.error,
                  job.model_id, job.version,
                  job.finished_at.isoformat() if job.finished_at else None, now)
                 for job in jobs],
            )
            await db.execute(
                "DELETE FROM jobs WHERE id NOT IN "
                "(SELECT id FROM jobs ORDER BY created_at DESC LIMIT ?)", (keep,)
            )

    async def read(self, job_id: str) -> TrainingJob | None:
        rows = await self._db.read(
            f"SELECT {', '.join(COLUMNS)}, written_at FROM jobs WHERE id = ?", (job_id,)
        )
        if not rows:
            return None
        (row,) = rows
        fields = dict(zip(COLUMNS, row, strict=False))
        job = TrainingJob(
            id=fields["id"], account_id=fields["account_id"],
            key=ModelKey(fields["account_id"], fields["strat"], fields["family"],
                         fields["model_type"]),
            created_at=datetime.fromisoformat(fields["created_at"]), state=fields["state"],
            progress=fields["progress"], stage=fields["stage"], error=fields["error"],
            model_id=fields["model_id"], version=fields["version"],
            finished_at=(datetime.fromisoformat(fields["finished_at"])
                         if fields["finished_at"] else None),
        )
        if job.state in ("queued", "running") and time.time() - row[-1] > ORPHANED_AFTER:
            job.state, job.error = "failed", LOST
        return job

    async def request_cancel(self, job_id: str) -> None:
        async with self._db.transaction() as db:
            await db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))

    async def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        ids = list(job_ids)[:500]  # a process runs a handful at a time
        marks = ",".join("?" * len(ids))
        rows = await self._db.read(
            f"SELECT id FROM jobs WHERE cancel_requested = 1 AND id IN ({marks})", ids
        )
        return {row[0] for row in rows}

    async def ping(self) -> None:
        await self._db.ping()

    async def close(self) -> None:
        await self._db.close()
