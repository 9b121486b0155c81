"""The training jobs' queue and state in an SQLite file, shared by every server process of
this machine (``nember serve --workers N``).

A job is enqueued with its payload (the training spec, as JSON, and the uploaded CSV, a BLOB in
a table of its own: rewriting a running job's progress must not rewrite megabytes), and
claimed by whichever process has a free training slot. Every change that decides something (a
claim, its orphan sweep, a finish) is one ``BEGIN IMMEDIATE`` transaction: SQLite's write lock
serializes them across processes, so two processes never claim the same job and each claim
sees every earlier one (fairness between accounts). The running process rewrites each job at
least every ``JOB_HEARTBEAT_SECONDS``; one that stopped writing for ``JOB_ORPHANED_AFTER``
seconds died with its process, and its job is re-queued or failed (``JobBoard.claim``).

The queue holds uploads, so the file is written durably (synchronous=FULL).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nember_core.plugin_api import (
    JOB_MAX_ATTEMPTS,
    JOB_ORPHANED_AFTER,
    ClaimedJob,
    ModelKey,
    TrainingJob,
)

from .db import Database

ORPHANED_AFTER = JOB_ORPHANED_AFTER
LOST = "the server process running this job stopped; train the model again"
IN_LIST = 500  # ids per query: a process runs a handful of jobs at a time

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
    # 2: the queue: who claimed a job, when, how many times; its payload until it ends
    """
    ALTER TABLE jobs ADD COLUMN claimed_by TEXT;
    ALTER TABLE jobs ADD COLUMN claimed_at REAL;
    ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE job_payloads (
        id TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
        spec TEXT NOT NULL,
        data BLOB NOT NULL
    );
    CREATE INDEX jobs_state ON jobs(state, created_at)
    """,
]
COLUMNS = ("id", "account_id", "strat", "family", "model_type", "created_at", "state",
           "progress", "stage", "error", "model_id", "version", "finished_at")
SELECTED = ", ".join(f"j.{name}" for name in COLUMNS)
RUNNABLE = "EXISTS (SELECT 1 FROM job_payloads p WHERE p.id = j.id)"

# Every column but the claim's and ``cancel_requested``, which only a cancel sets: the owner's
# next write of its progress must not undo it.
UPSERT = (
    f"INSERT INTO jobs ({', '.join(COLUMNS)}, written_at) "
    f"VALUES ({', '.join('?' * (len(COLUMNS) + 1))}) ON CONFLICT(id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in (*COLUMNS[1:], "written_at"))
)
INSERT = (f"INSERT INTO jobs ({', '.join(COLUMNS)}, written_at) "
          f"VALUES ({', '.join('?' * (len(COLUMNS) + 1))})")
# Orphans: a running job nobody wrote since the cutoff. Attempts and a payload left: back to
# the queue; else failed.
REQUEUE_ORPHANS = f"""
UPDATE jobs AS j SET state = 'queued', stage = 'queued', progress = 0, claimed_by = NULL,
    written_at = :now
WHERE j.state = 'running' AND j.written_at < :cutoff AND j.attempts < :attempts AND {RUNNABLE}
"""
FAIL_ORPHANS = """
UPDATE jobs SET state = 'failed', error = :lost, finished_at = :finished, written_at = :now
WHERE state = 'running' AND written_at < :cutoff
"""
# Payloads only queued and running jobs need.
DROP_PAYLOADS = ("DELETE FROM job_payloads WHERE id NOT IN "
                 "(SELECT id FROM jobs WHERE state IN ('queued', 'running'))")
# The fair order (JobBoard.claim): the accounts with the fewest running jobs, then the one
# served longest ago (never: first), then its oldest job.
NEXT = f"""
SELECT j.id FROM jobs AS j
JOIN (SELECT account_id, SUM(state = 'running') AS running, MAX(claimed_at) AS last_claimed
      FROM jobs GROUP BY account_id) AS load ON load.account_id = j.account_id
WHERE j.state = 'queued' AND {RUNNABLE}
ORDER BY load.running, load.last_claimed IS NOT NULL, load.last_claimed, j.created_at, j.id
LIMIT 1
"""
ANYTHING_TO_DO = f"""
SELECT 1 FROM jobs AS j
WHERE (j.state = 'queued' AND {RUNNABLE}) OR (j.state = 'running' AND j.written_at < ?)
LIMIT 1
"""
CLAIM = """
UPDATE jobs SET state = 'running', stage = 'starting', progress = 0, error = NULL,
    claimed_by = ?, claimed_at = ?, attempts = attempts + 1, written_at = ?
WHERE id = ?
"""
# Keep the newest ``keep`` jobs, and every one whose payload is still here.
PRUNE = ("DELETE FROM jobs WHERE id NOT IN "
         "(SELECT id FROM jobs ORDER BY created_at DESC LIMIT ?) "
         "AND id NOT IN (SELECT id FROM job_payloads)")


def _marks(values: Sequence) -> str:
    return ",".join("?" * len(values))


def _job(row: Sequence) -> TrainingJob:
    fields = dict(zip(COLUMNS, row, strict=False))
    return TrainingJob(
        id=fields["id"], account_id=fields["account_id"],
        key=ModelKey(fields["account_id"], fields["strat"], fields["family"],
                     fields["model_type"]),
        created_at=datetime.fromisoformat(fields["created_at"]), state=fields["state"],
        progress=fields["progress"], stage=fields["stage"], error=fields["error"],
        model_id=fields["model_id"], version=fields["version"],
        finished_at=(datetime.fromisoformat(fields["finished_at"])
                     if fields["finished_at"] else None),
    )


def _iso_now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _rows(db: sqlite3.Connection, sql: str, args: Sequence | Mapping = ()) -> list:
    return db.execute(sql, args).fetchall()


class SqliteJobBoard:
    def __init__(self, db: Database):
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> SqliteJobBoard:
        return cls(await Database.open(path, SCHEMA, durable=True, migrations=MIGRATIONS))

    async def enqueue(self, job: TrainingJob, spec: Mapping[str, Any], data: bytes) -> None:
        text = json.dumps(dict(spec))
        row = (*_values(job), time.time())

        def enqueue(db: sqlite3.Connection) -> None:
            db.execute(INSERT, row)
            db.execute("INSERT INTO job_payloads (id, spec, data) VALUES (?, ?, ?)",
                       (job.id, text, bytes(data)))
        await self._db.transaction(enqueue)

    async def claim(self, worker: str,
                    orphaned_after: float = JOB_ORPHANED_AFTER) -> ClaimedJob | None:
        # Servers with a free slot ask often: an idle board answers without the write lock.
        if not await self._db.read(ANYTHING_TO_DO, (time.time() - orphaned_after,)):
            return None

        def claim(db: sqlite3.Connection) -> tuple | None:
            now = time.time()
            cutoff = now - orphaned_after
            db.execute(REQUEUE_ORPHANS, {"now": now, "cutoff": cutoff,
                                         "attempts": JOB_MAX_ATTEMPTS})
            db.execute(FAIL_ORPHANS, {"now": now, "cutoff": cutoff, "lost": LOST,
                                      "finished": _iso_now()})
            db.execute(DROP_PAYLOADS)
            found = _rows(db, NEXT)
            if not found:
                return None
            job_id = found[0][0]
            db.execute(CLAIM, (worker, now, now, job_id))
            (claimed,) = _rows(
                db, f"SELECT {SELECTED}, j.attempts, p.spec, p.data FROM jobs AS j "
                    "JOIN job_payloads AS p ON p.id = j.id WHERE j.id = ?", (job_id,))
            return claimed
        row = await self._db.transaction(claim)
        if row is None:
            return None
        *fields, attempts, spec, data = row
        return ClaimedJob(job=_job(fields), spec=json.loads(spec), data=bytes(data),
                          attempt=attempts)

    async def heartbeat(self, worker: str, jobs: Sequence[TrainingJob]) -> set[str]:
        jobs = list(jobs)[:IN_LIST]
        if not jobs:
            return set()
        ids = [job.id for job in jobs]
        now = time.time()

        def beat(db: sqlite3.Connection) -> list:
            db.executemany(
                "UPDATE jobs SET progress = ?, stage = ?, written_at = ? "
                "WHERE id = ? AND state = 'running' AND claimed_by = ?",
                [(job.progress, job.stage, now, job.id, worker) for job in jobs])
            return _rows(db, f"SELECT id FROM jobs WHERE state = 'running' AND "
                             f"claimed_by = ? AND id IN ({_marks(ids)})", (worker, *ids))
        held = await self._db.transaction(beat)
        return set(ids) - {row[0] for row in held}

    async def finish(self, worker: str, job: TrainingJob, keep: int) -> bool:
        finished = (job.state, job.progress, job.stage, job.error, job.model_id, job.version,
                    job.finished_at.isoformat() if job.finished_at else _iso_now(), time.time(),
                    job.id, worker)

        def finish(db: sqlite3.Connection) -> bool:
            if db.execute(
                "UPDATE jobs SET state = ?, progress = ?, stage = ?, error = ?, model_id = ?, "
                "version = ?, finished_at = ?, written_at = ? "
                "WHERE id = ? AND state = 'running' AND claimed_by = ?", finished,
            ).rowcount != 1:
                return False
            db.execute("DELETE FROM job_payloads WHERE id = ?", (job.id,))
            db.execute(PRUNE, (keep,))
            return True
        return await self._db.transaction(finish)

    async def release(self, worker: str, job_ids: Sequence[str]) -> None:
        ids = list(job_ids)[:IN_LIST]
        if not ids:
            return
        await self._db.write(
            "UPDATE jobs AS j SET state = 'queued', stage = 'queued', progress = 0, "
            "claimed_by = NULL, attempts = MAX(attempts - 1, 0), written_at = ? "
            f"WHERE j.state = 'running' AND j.claimed_by = ? AND {RUNNABLE} "
            f"AND j.id IN ({_marks(ids)})", (time.time(), worker, *ids))

    async def withdraw(self, job_id: str, error: str) -> bool:
        withdrawn = (error, _iso_now(), time.time(), job_id)

        def withdraw(db: sqlite3.Connection) -> bool:
            if db.execute(
                "UPDATE jobs SET state = 'failed', stage = 'withdrawn', error = ?, "
                "finished_at = ?, written_at = ? WHERE id = ? AND state = 'queued'", withdrawn,
            ).rowcount != 1:
                return False
            db.execute("DELETE FROM job_payloads WHERE id = ?", (job_id,))
            return True
        return await self._db.transaction(withdraw)

    async def write(self, jobs: Sequence[TrainingJob], keep: int) -> None:
        now = time.time()
        rows = [(*_values(job), now) for job in jobs]

        def write(db: sqlite3.Connection) -> None:
            db.executemany(UPSERT, rows)
            db.execute(PRUNE, (keep,))
        await self._db.transaction(write)

    async def read(self, job_id: str) -> TrainingJob | None:
        rows = await self._db.read(
            f"SELECT {SELECTED}, j.written_at, j.attempts, {RUNNABLE} FROM jobs AS j "
            "WHERE j.id = ?", (job_id,))
        if not rows:
            return None
        (row,) = rows
        *fields, written_at, attempts, runnable = row
        job = _job(fields)
        if time.time() - written_at > ORPHANED_AFTER:
            if job.state == "running" and runnable and attempts < JOB_MAX_ATTEMPTS:
                job.state, job.stage, job.progress = "queued", "queued", 0.0
            elif job.state == "running" or (job.state == "queued" and not runnable):
                job.state, job.error = "failed", LOST
        return job

    async def request_cancel(self, job_id: str) -> None:
        await self._db.write("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))

    async def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        ids = list(job_ids)[:IN_LIST]
        if not ids:
            return set()
        rows = await self._db.read(
            f"SELECT id FROM jobs WHERE cancel_requested = 1 AND id IN ({_marks(ids)})", ids
        )
        return {row[0] for row in rows}

    async def ping(self) -> None:
        await self._db.ping()

    async def close(self) -> None:
        await self._db.close()


def _values(job: TrainingJob) -> tuple:
    return (job.id, job.account_id, job.key.strat, job.key.family, job.key.model_type,
            job.created_at.isoformat(), job.state, job.progress, job.stage, job.error,
            job.model_id, job.version,
            job.finished_at.isoformat() if job.finished_at else None)
