"""Trained models in PostgreSQL: metadata and model files (bytea), so that no node needs a
shared disk, and a model trained through any node serves on every node.

Limit: a model file may be at most 256 MiB (``MAX_ARTIFACT_BYTES``); a larger one is refused
with :class:`InvalidData` and nothing is stored. PostgreSQL itself takes up to 1 GB per value,
but a file is sent and read back as one message held in memory by the node, and training's
trees, forests and boosters stay far below. Calls that move a file get ``timeout`` plus one
second per 8 MiB.

A model's versions are numbered by its row in ``nember_models``, whose ``highest`` only grows:
a deleted version's number is never given again. ``generation`` is a counter that every save
and delete bumps in its own transaction, so a node that sees it change finds the change
committed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import asyncpg
import attrs

from nember_core.plugin_api import InvalidData, ModelKey, ModelMeta, NotFound

from .migrations import SchemaStore

MAX_ARTIFACT_BYTES = 256 * 1024 * 1024

COMPONENT = "models"
MIGRATIONS = [
    # 1
    """
    CREATE TABLE nember_models (
        account_id text NOT NULL,
        strat text NOT NULL,
        family text NOT NULL,
        model_type text NOT NULL,
        highest integer NOT NULL,  -- the highest version ever stored, deleted ones included
        PRIMARY KEY (account_id, strat, family, model_type)
    );
    CREATE TABLE nember_model_versions (
        account_id text NOT NULL,
        strat text NOT NULL,
        family text NOT NULL,
        model_type text NOT NULL,
        version integer NOT NULL,
        meta text NOT NULL,  -- ModelMeta.to_json(), its version being the column's
        size bigint NOT NULL,
        artifact bytea NOT NULL,
        saved_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (account_id, strat, family, model_type, version),
        FOREIGN KEY (account_id, strat, family, model_type) REFERENCES nember_models
    );
    -- Model files are compressed already (or random-looking floats): out of line, as they are.
    ALTER TABLE nember_model_versions ALTER COLUMN artifact SET STORAGE EXTERNAL;
    CREATE TABLE nember_model_generation (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        -- A database of its own: a recreated one never hands out a token seen before.
        epoch text NOT NULL DEFAULT md5(random()::text || clock_timestamp()::text),
        generation bigint NOT NULL DEFAULT 0
    );
    INSERT INTO nember_model_generation DEFAULT VALUES;
    """,
]

# One statement, so that the transfer's timeout covers its commit as well. The unreferenced
# generation bump runs last, so its row lock (which orders every save and delete) is held
# through the commit only, not through a large file's transfer.
SAVE = """
WITH next AS (
    INSERT INTO nember_models AS m (account_id, strat, family, model_type, highest)
    VALUES ($1, $2, $3, $4, 1)
    ON CONFLICT (account_id, strat, family, model_type) DO UPDATE SET highest = m.highest + 1
    RETURNING highest
), bump AS (
    UPDATE nember_model_generation SET generation = generation + 1
)
INSERT INTO nember_model_versions (account_id, strat, family, model_type, version, meta, size,
                                   artifact)
SELECT $1, $2, $3, $4, highest, $5, $6, $7 FROM next
RETURNING version"""
DELETE = """
WITH gone AS (
    DELETE FROM nember_model_versions
    WHERE account_id = $1 AND strat = $2 AND family = $3 AND model_type = $4 AND version = $5
    RETURNING 1
)
UPDATE nember_model_generation SET generation = generation + 1 WHERE EXISTS (SELECT FROM gone)
"""
_KEY = "account_id = $1 AND strat = $2 AND family = $3 AND model_type = $4"


def _key(key: ModelKey) -> tuple[str, str, str, str]:
    return key.account_id, key.strat, key.family, key.model_type


def _meta(row: asyncpg.Record) -> ModelMeta:
    return ModelMeta.from_json({**json.loads(row["meta"]), "version": row["version"]})


class PostgresModelStore(SchemaStore, component=COMPONENT, migrations=MIGRATIONS):
    async def save(self, meta: ModelMeta, artifact: bytes) -> ModelMeta:
        size = len(artifact)
        if size > MAX_ARTIFACT_BYTES:
            raise InvalidData(
                f"the model file is {size / 2**20:.1f} MiB; the postgres model store keeps "
                f"files of at most {MAX_ARTIFACT_BYTES // 2**20} MiB")
        async with self._db.connection() as conn:
            version = await conn.fetchval(
                SAVE, *_key(meta.key), json.dumps(meta.to_json()), size, bytes(artifact),
                timeout=self._transfer_timeout(size))
        return attrs.evolve(meta, version=version)

    async def latest(self, key: ModelKey) -> ModelMeta | None:
        row = await self._db.fetchrow(
            f"SELECT version, meta FROM nember_model_versions WHERE {_KEY} "
            "ORDER BY version DESC LIMIT 1", *_key(key))
        return _meta(row) if row else None

    async def latest_versions(self, keys: Sequence[ModelKey]) -> dict[ModelKey, int]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        rows = await self._db.fetch(
            "SELECT account_id, strat, family, model_type, max(version) AS version "
            "FROM nember_model_versions JOIN unnest($1::text[], $2::text[], $3::text[], "
            "$4::text[]) AS k(account_id, strat, family, model_type) "
            "USING (account_id, strat, family, model_type) GROUP BY 1, 2, 3, 4",
            *(list(column) for column in zip(*map(_key, wanted), strict=True)))
        return {ModelKey(*row[:4]): row["version"] for row in rows}

    async def read(self, meta: ModelMeta) -> bytes:
        where = f"{_KEY} AND version = $5"
        args = (*_key(meta.key), meta.version)
        async with self._db.connection() as conn:
            size = await conn.fetchval(
                f"SELECT size FROM nember_model_versions WHERE {where}", *args)
            artifact = None if size is None else await conn.fetchval(
                f"SELECT artifact FROM nember_model_versions WHERE {where}", *args,
                timeout=self._transfer_timeout(size))
        if artifact is None:
            raise NotFound(f"model {meta.key.id} has no version {meta.version}")
        return artifact

    async def list(self, account_id: str) -> list[ModelMeta]:
        rows = await self._db.fetch(
            "SELECT version, meta FROM nember_model_versions WHERE account_id = $1 "
            "ORDER BY strat, family, model_type, version", account_id)
        return [_meta(row) for row in rows]

    async def delete(self, meta: ModelMeta) -> None:
        await self._db.execute(DELETE, *_key(meta.key), meta.version)

    async def generation(self) -> str:
        row = await self._db.fetchrow("SELECT epoch, generation FROM nember_model_generation")
        return f"{row['epoch']}-{row['generation']}"

