"""Training jobs' state in PostgreSQL, so that every node answers ``GET /api/jobs/{id}``.

The process running a job writes its state, and rewrites the running ones at least every
``JOB_HEARTBEAT_SECONDS``; a queued or running job nobody wrote for ``ORPHANED_AFTER`` seconds
(by the database's clock) was lost with its node, and reads as failed.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from nember_core.plugin_api import JOB_HEARTBEAT_SECONDS, ModelKey, TrainingJob

from .db import Database
from .migrations import SchemaState, open_store
from .options import PostgresOptions

# As the SQLite board: the same rule and words on every board.
ORPHANED_AFTER = 6 * JOB_HEARTBEAT_SECONDS
LOST = "the server process running this job stopped; train the model again"
# pg_advisory_xact_lock(JOB_LOCKS, 0): one writer at a time, so that two nodes' upserts and
# trimming never lock each other's rows in opposite orders.
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
]
COLUMNS = ("id", "account_id", "strat", "family", "model_type", "created_at", "state",
           "progress", "stage", "error", "model_id", "version", "finished_at")
# Every column but cancel_requested, which only a cancel sets: the owner's next write of its
# progress must not undo it.
UPSERT = (
    f"INSERT INTO nember_jobs ({', '.join(COLUMNS)}, written_at) VALUES "
    f"({', '.join(f'${n}' for n in range(1, len(COLUMNS) + 1))}, now()) "
    "ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in (*COLUMNS[1:], "written_at"))
)


def _row(job: TrainingJob) -> tuple:
    return (job.id, job.account_id, job.key.strat, job.key.family, job.key.model_type,
            job.created_at, job.state, float(job.progress), job.stage, job.error, job.model_id,
            job.version, job.finished_at)


def _job(row: asyncpg.Record) -> TrainingJob:
    job = TrainingJob(
        id=row["id"], account_id=row["account_id"],
        key=ModelKey(row["account_id"], row["strat"], row["family"], row["model_type"]),
        created_at=row["created_at"], state=row["state"], progress=row["progress"],
        stage=row["stage"], error=row["error"], model_id=row["model_id"],
        version=row["version"], finished_at=row["finished_at"],
    )
    if job.state in ("queued", "running") and row["silent_for"] > ORPHANED_AFTER:
        job.state, job.error = "failed", LOST
    return job


class PostgresJobBoard:
    def __init__(self, db: Database, schema: SchemaState):
        self._db = db
        self.schema = schema

    @classmethod
    async def open(cls, options: PostgresOptions) -> PostgresJobBoard:
        return cls(*await open_store(options, COMPONENT, MIGRATIONS))

    async def ping(self) -> None:
        await self._db.fetchval("SELECT 1")

    async def close(self) -> None:
        await self._db.close()

    async def write(self, jobs: Sequence[TrainingJob], keep: int) -> None:
        async with self._db.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1, 0)", JOB_LOCKS)
            if jobs:
                await conn.executemany(UPSERT, [_row(job) for job in jobs])
            await conn.execute(
                "DELETE FROM nember_jobs WHERE id NOT IN "
                "(SELECT id FROM nember_jobs ORDER BY created_at DESC LIMIT $1)", keep)

    async def read(self, job_id: str) -> TrainingJob | None:
        row = await self._db.fetchrow(
            f"SELECT {', '.join(COLUMNS)}, "
            "extract(epoch FROM clock_timestamp() - written_at)::float8 AS silent_for "
            "FROM nember_jobs WHERE id = $1", job_id)
        return _job(row) if row else None

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
