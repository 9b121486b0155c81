"""Versioned schemas: each store's component has a list of SQL scripts, and
``nember_schema(component, version)`` records how many of them a database has run.

Script N (from 1) takes the component from version N-1 to N. Each runs in a transaction of its
own, together with the version bump, under a transaction-level advisory lock: nodes starting
at once queue on the lock, and each finds the version the previous one left, so every script
runs exactly once. A transaction-level lock (rather than a session one) can't outlive its
transaction in a pooled connection, whatever happens to the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import attrs
import structlog

from .db import Database, open_database
from .options import PostgresOptions, PostgresStoreError

log = structlog.get_logger("nember.postgres")

# pg_advisory_xact_lock's key for schema changes (the bytes of "nember"): one lock for every
# component, as upgrades are rare and short.
SCHEMA_LOCK = 0x6E656D626572
# A script, or the wait for another node's, may take longer than an ordinary call; start-up
# still fails rather than hangs on a database that stopped answering.
MIGRATION_TIMEOUT = 300.0

SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS nember_schema (
    component text PRIMARY KEY,
    version integer NOT NULL,
    upgraded_at timestamptz NOT NULL DEFAULT now()
)"""
RECORD = """
INSERT INTO nember_schema (component, version) VALUES ($1, $2)
ON CONFLICT (component) DO UPDATE SET version = excluded.version, upgraded_at = now()"""


@attrs.frozen
class SchemaState:
    """A component's schema version before and after a start (or ``nember db upgrade``)."""

    component: str
    before: int
    after: int

    def describe(self) -> str:
        if self.before == self.after:
            return f"schema {self.component!r} is up to date (version {self.after})"
        if self.before == 0:
            return f"schema {self.component!r} created (version {self.after})"
        return f"schema {self.component!r} upgraded from version {self.before} to {self.after}"


async def _version(conn: asyncpg.Connection, component: str) -> int:
    if await conn.fetchval("SELECT to_regclass('nember_schema')") is None:
        return 0
    version = await conn.fetchval(
        "SELECT version FROM nember_schema WHERE component = $1", component)
    return version or 0


async def upgrade(db: Database, component: str, scripts: Sequence[str]) -> SchemaState:
    """Run the scripts this database lacks, each in its own transaction."""
    before: int | None = None
    async with db.connection() as conn:
        while True:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK,
                                   timeout=MIGRATION_TIMEOUT)
                await conn.execute(SCHEMA_TABLE)
                version = await _version(conn, component)
                if before is None:
                    before = version
                if version >= len(scripts):
                    break
                await conn.execute(scripts[version], timeout=MIGRATION_TIMEOUT)
                await conn.execute(RECORD, component, version + 1)
            log.info("postgres.schema_upgraded", component=component, version=version + 1)
    return SchemaState(component, before, version)


async def prepare(db: Database, component: str, scripts: Sequence[str],
                  migrate: bool) -> SchemaState:
    """Bring ``component`` to the newest version (``migrate``), or check that it is there."""
    try:
        if migrate:
            state = await upgrade(db, component, scripts)
        else:
            async with db.connection() as conn:
                version = await _version(conn, component)
            state = SchemaState(component, version, version)
    except Exception as exc:
        raise PostgresStoreError(
            f"postgres: preparing the schema {component!r} failed: "
            f"{str(exc) or type(exc).__name__}") from None
    if state.after < len(scripts):
        raise PostgresStoreError(
            f"postgres: the schema {component!r} is at version {state.after}, this nember "
            f"needs version {len(scripts)}: run `nember db upgrade` (or set migrate: true)")
    if state.after > len(scripts):
        # Upgraded by a newer nember (a rolling upgrade): migrations only add, so serve on.
        log.warning("postgres.schema_newer", component=component, version=state.after,
                    known=len(scripts))
    return state


async def open_store(options: PostgresOptions, component: str,
                     scripts: Sequence[str]) -> tuple[Database, SchemaState]:
    """A store's database handle, its schema ready (or a clear refusal)."""
    db = await open_database(options)
    try:
        return db, await prepare(db, component, scripts, options.migrate)
    except BaseException:
        await db.close()
        raise


# On top of a store's ``timeout``, for moving a large value (a model file, a job's CSV).
TRANSFER_BYTES_PER_SECOND = 8 * 1024 * 1024


class SchemaStore:
    """What every PostgreSQL store shares: its handle on the pool and its schema, made ready
    (or refused) when it opens. A subclass names its component and migrations:
    ``class PostgresKeyStore(SchemaStore, component=COMPONENT, migrations=MIGRATIONS)``."""

    component: str
    migrations: Sequence[str]

    def __init_subclass__(cls, component: str, migrations: Sequence[str], **kwargs):
        super().__init_subclass__(**kwargs)
        cls.component, cls.migrations = component, migrations

    def __init__(self, db: Database, schema: SchemaState):
        self._db = db
        self.schema = schema

    @classmethod
    async def open(cls, options: PostgresOptions):
        return cls(*await open_store(options, cls.component, cls.migrations))

    async def ping(self) -> None:
        await self._db.fetchval("SELECT 1")

    async def close(self) -> None:
        await self._db.close()

    def _transfer_timeout(self, size: int) -> float:
        return self._db.timeout + size / TRANSFER_BYTES_PER_SECOND
