"""The training jobs' queue and state in PostgreSQL, shared by every node.

A job is enqueued with its payload (the training spec and the uploaded CSV, ``bytea`` in a table
of its own) by the node that accepted it, and claimed by any node with a free training slot:
``SELECT ... FOR UPDATE SKIP LOCKED`` picks the next queued job in the fair order and the same
statement marks it running with the claimer's name. Claims (with their orphan sweep), finishes,
releases, heartbeats and writes also take one transaction-level advisory lock: each claim sees
every earlier one (so fairness between accounts holds across nodes claiming at once), and
multi-row updates and trimming never lock each other's rows in opposite orders. ``SKIP LOCKED``
keeps a claim from ever waiting on a job a cancel is changing, and makes two claimers never
take one job, the lock or not.

The process running a job rewrites it at least every ``JOB_HEARTBEAT_SECONDS``; a running job
nobody wrote for ``JOB_ORPHANED_AFTER`` seconds (by the database's clock) was lost with its node,
and is re-queued or failed (``JobBoard.claim``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from nember_core.plugin_api import (
    JOB_MAX_ATTEMPTS,
    JOB_ORPHANED_AFTER,
    ClaimedJob,
    ModelKey,
    TrainingJob,
)

from .db import affected
from .migrations import SchemaStore

# As the SQLite board: the same rule and words on every board.
ORPHANED_AFTER = JOB_ORPHANED_AFTER
LOST = "the server process running this job stopped; train the model again"
# pg_advisory_xact_lock(JOB_LOCKS, 0): one writer at a time (see above).
JOB_LOCKS = 0x6E6D6A62

COMPONENT = "jobs"
MIGRATIONS = [
    # 1
    """
    CREATE TABLE nember_jobs (
        id text PRIMARY KEY,
        account_id text NOT NULL,
        strat text NOT NULL,
        family text NOT NULL,
        model_type text NOT NULL,
        created_at timestamptz NOT NULL,
        state text NOT NULL,
        progress double precision NOT NULL,
        stage text NOT NULL,
        error text,
        model_id text,
        version integer,
        finished_at timestamptz,
        written_at timestamptz NOT NULL,
        cancel_requested boolean NOT NULL DEFAULT false
    );
    CREATE INDEX nember_jobs_created ON nember_jobs (created_at);
    """,
    # 2: the queue: who claimed a job, when, how many times; its payload until it ends
    """
    ALTER TABLE nember_jobs
        ADD COLUMN claimed_by text,
        ADD COLUMN claimed_at timestamptz,
        ADD COLUMN attempts integer NOT NULL DEFAULT 0;
    CREATE TABLE nember_job_payloads (
        id text PRIMARY KEY REFERENCES nember_jobs (id) ON DELETE CASCADE,
        spec text NOT NULL,
        size bigint NOT NULL,
        data bytea NOT NULL
    );
    CREATE INDEX nember_jobs_open ON nember_jobs (state, created_at)
        WHERE state IN ('queued', 'running');
    """,
]
COLUMNS = ("id", "account_id", "strat", "family", "model_type", "created_at", "state",
           "progress", "stage", "error", "model_id", "version", "finished_at")
SELECTED = ", ".join(f"j.{name}" for name in COLUMNS)
RUNNABLE = "EXISTS (SELECT 1 FROM nember_job_payloads p WHERE p.id = j.id)"
LOCK = "SELECT pg_advisory_xact_lock($1, 0)"
# Every column but the claim's and cancel_requested, which only a cancel sets: the owner's
# next write of its progress must not undo it.
UPSERT = (
    f"INSERT INTO nember_jobs ({', '.join(COLUMNS)}, written_at) VALUES "
    f"({', '.join(f'${n}' for n in range(1, len(COLUMNS) + 1))}, now()) "
    "ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in (*COLUMNS[1:], "written_at"))
)
# One statement, so that the transfer's timeout covers its commit as well; the payload's
# reference to its job is checked at the statement's end.
ENQUEUE = f"""
WITH job AS (
    INSERT INTO nember_jobs ({', '.join(COLUMNS)}, written_at)
    VALUES ({', '.join(f'${n}' for n in range(1, len(COLUMNS) + 1))}, clock_timestamp())
    RETURNING id
)
INSERT INTO nember_job_payloads (id, spec, size, data)
SELECT id, ${len(COLUMNS) + 1}, ${len(COLUMNS) + 2}, ${len(COLUMNS) + 3} FROM job
"""
# Orphans: running jobs nobody wrote for $1 seconds. Attempts and a payload left: back to the
# queue; else failed (the caller then drops their payloads).
REQUEUE_ORPHANS = f"""
UPDATE nember_jobs AS j SET state = 'queued', stage = 'queued', progress = 0,
    claimed_by = NULL, written_at = clock_timestamp()
WHERE j.state = 'running' AND j.written_at < clock_timestamp() - make_interval(secs => $1)
    AND j.attempts < $2 AND {RUNNABLE}
"""
FAIL_ORPHANS = """
UPDATE nember_jobs SET state = 'failed', error = $2, finished_at = clock_timestamp(),
    written_at = clock_timestamp()
WHERE state = 'running' AND written_at < clock_timestamp() - make_interval(secs => $1)
RETURNING id
"""
# The fair order (JobBoard.claim): the accounts with the fewest running jobs, then the one
# served longest ago (never: first), then its oldest job; taken and marked in one statement.
CLAIM = f"""
WITH load AS (
    SELECT account_id, count(*) FILTER (WHERE state = 'running') AS running,
           max(claimed_at) AS last_claimed
    FROM nember_jobs GROUP BY account_id
), next AS (
    SELECT j.id FROM nember_jobs AS j JOIN load USING (account_id)
    WHERE j.state = 'queued' AND {RUNNABLE}
    ORDER BY load.running, load.last_claimed NULLS FIRST, j.created_at, j.id
    LIMIT 1
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE nember_jobs AS j SET state = 'running', stage = 'starting', progress = 0, error = NULL,
    claimed_by = $1, claimed_at = clock_timestamp(), attempts = j.attempts + 1,
    written_at = clock_timestamp()
FROM next WHERE j.id = next.id
RETURNING {SELECTED}, j.attempts
"""
ANYTHING_TO_DO = f"""
SELECT EXISTS (
    SELECT 1 FROM nember_jobs AS j
    WHERE (j.state = 'queued' AND {RUNNABLE})
        OR (j.state = 'running'
            AND j.written_at < clock_timestamp() - make_interval(secs => $1))
)
"""
HEARTBEAT = """
UPDATE nember_jobs AS j SET progress = u.progress, stage = u.stage,
    written_at = clock_timestamp()
FROM unnest($2::text[], $3::float8[], $4::text[]) AS u(id, progress, stage)
WHERE j.id = u.id AND j.state = 'running' AND j.claimed_by = $1
RETURNING j.id
"""
FINISH = """
UPDATE nember_jobs SET state = $3, progress = $4, stage = $5, error = $6, model_id = $7,
    version = $8, finished_at = coalesce($9, clock_timestamp()), written_at = clock_timestamp()
WHERE id = $1 AND state = 'running' AND claimed_by = $2
"""
RELEASE = f"""
UPDATE nember_jobs AS j SET state = 'queued', stage = 'queued', progress = 0,
    claimed_by = NULL, attempts = greatest(j.attempts - 1, 0), written_at = clock_timestamp()
WHERE j.state = 'running' AND j.claimed_by = $1 AND j.id = ANY($2::text[]) AND {RUNNABLE}
"""
WITHDRAW = """
UPDATE nember_jobs SET state = 'failed', stage = 'withdrawn', error = $2,
    finished_at = clock_timestamp(), written_at = clock_timestamp()
WHERE id = $1 AND state = 'queued'
"""
# Keep the newest ``keep`` jobs, and every one whose payload is still here.
PRUNE = f"""
DELETE FROM nember_jobs AS j
WHERE j.id NOT IN (SELECT id FROM nember_jobs ORDER BY created_at DESC LIMIT $1)
    AND NOT {RUNNABLE}
"""


def _row(job: TrainingJob) -> tuple:
    return (job.id, job.account_id, job.key.strat, job.key.family, job.key.model_type,
            job.created_at, job.state, float(job.progress), job.stage, job.error, job.model_id,
            job.version, job.finished_at)


def _job(row: asyncpg.Record) -> TrainingJob:
    return TrainingJob(
        id=row["id"], account_id=row["account_id"],
        key=ModelKey(row["account_id"], row["strat"], row["family"], row["model_type"]),
        created_at=row["created_at"], state=row["state"], progress=row["progress"],
        stage=row["stage"], error=row["error"], model_id=row["model_id"],
        version=row["version"], finished_at=row["finished_at"],
    )


class PostgresJobBoard(SchemaStore, component=COMPONENT, migrations=MIGRATIONS):
    async def enqueue(self, job: TrainingJob, spec: Mapping[str, Any], data: bytes) -> None:
        size = len(data)
        async with self._db.connection() as conn:
            await conn.execute(ENQUEUE, *_row(job), json.dumps(dict(spec)), size, bytes(data),
                               timeout=self._transfer_timeout(size))

    async def claim(self, worker: str,
                    orphaned_after: float = JOB_ORPHANED_AFTER) -> ClaimedJob | None:
        while True:
            # Nodes with a free slot ask often: an idle board answers without the lock.
            if not await self._db.fetchval(ANYTHING_TO_DO, float(orphaned_after)):
                return None
            async with self._db.transaction() as conn:
                await conn.execute(LOCK, JOB_LOCKS)
                await conn.execute(REQUEUE_ORPHANS, float(orphaned_after), JOB_MAX_ATTEMPTS)
                failed = await conn.fetch(FAIL_ORPHANS, float(orphaned_after), LOST)
                if failed:
                    await conn.execute(
                        "DELETE FROM nember_job_payloads WHERE id = ANY($1::text[])",
                        [row["id"] for row in failed])
                row = await conn.fetchrow(CLAIM, worker)
            if row is None:
                return None
            # The payload after the commit: its transfer holds no lock. Only this claimer ends
            # the job now, so it is there, unless the claim was orphaned meanwhile.
            async with self._db.connection() as conn:
                size = await conn.fetchval(
                    "SELECT size FROM nember_job_payloads WHERE id = $1", row["id"])
                payload = None if size is None else await conn.fetchrow(
                    "SELECT spec, data FROM nember_job_payloads WHERE id = $1", row["id"],
                    timeout=self._transfer_timeout(size))
            if payload is not None:
                return ClaimedJob(job=_job(row), spec=json.loads(payload["spec"]),
                                  data=bytes(payload["data"]), attempt=row["attempts"])

    async def heartbeat(self, worker: str, jobs: Sequence[TrainingJob]) -> set[str]:
        jobs = list(jobs)
        if not jobs:
            return set()
        async with self._db.transaction() as conn:
            await conn.execute(LOCK, JOB_LOCKS)
            held = await conn.fetch(HEARTBEAT, worker, [job.id for job in jobs],
                                    [float(job.progress) for job in jobs],
                                    [job.stage for job in jobs])
        return {job.id for job in jobs} - {row["id"] for row in held}

    async def finish(self, worker: str, job: TrainingJob, keep: int) -> bool:
        async with self._db.transaction() as conn:
            await conn.execute(LOCK, JOB_LOCKS)
            status = await conn.execute(
                FINISH, job.id, worker, job.state, float(job.progress), job.stage, job.error,
                job.model_id, job.version, job.finished_at)
            if affected(status) != 1:
                return False
            await conn.execute("DELETE FROM nember_job_payloads WHERE id = $1", job.id)
            await conn.execute(PRUNE, keep)
        return True

    async def release(self, worker: str, job_ids: Sequence[str]) -> None:
        ids = list(job_ids)
        if not ids:
            return
        async with self._db.transaction() as conn:
            await conn.execute(LOCK, JOB_LOCKS)
            await conn.execute(RELEASE, worker, ids)

    async def withdraw(self, job_id: str, error: str) -> bool:
        # No lock: one row, and a claim skips it while this holds it.
        async with self._db.transaction() as conn:
            if affected(await conn.execute(WITHDRAW, job_id, error)) != 1:
                return False
            await conn.execute("DELETE FROM nember_job_payloads WHERE id = $1", job_id)
        return True

    async def write(self, jobs: Sequence[TrainingJob], keep: int) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(LOCK, JOB_LOCKS)
            if jobs:
                await conn.executemany(UPSERT, [_row(job) for job in jobs])
            await conn.execute(PRUNE, keep)

    async def read(self, job_id: str) -> TrainingJob | None:
        row = await self._db.fetchrow(
            f"SELECT {SELECTED}, j.attempts, {RUNNABLE} AS runnable, "
            "extract(epoch FROM clock_timestamp() - j.written_at)::float8 AS silent_for "
            "FROM nember_jobs AS j WHERE j.id = $1", job_id)
        if row is None:
            return None
        job = _job(row)
        if row["silent_for"] > ORPHANED_AFTER:  # as claim will treat it
            if job.state == "running" and row["runnable"] and row["attempts"] < JOB_MAX_ATTEMPTS:
                job.state, job.stage, job.progress = "queued", "queued", 0.0
            elif job.state == "running" or (job.state == "queued" and not row["runnable"]):
                job.state, job.error = "failed", LOST
        return job

    async def request_cancel(self, job_id: str) -> None:
        await self._db.execute(
            "UPDATE nember_jobs SET cancel_requested = true WHERE id = $1", job_id)

    async def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        ids = list(job_ids)
        if not ids:
            return set()
        rows = await self._db.fetch(
            "SELECT id FROM nember_jobs WHERE cancel_requested AND id = ANY($1::text[])", ids)
        return {row["id"] for row in rows}
