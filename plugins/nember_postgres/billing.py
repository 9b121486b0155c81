"""The billing ledger in PostgreSQL: one charge per accepted connection, and its usage.

A charge and its open usage row are one statement, committed with synchronous_commit on (the
pool sets it for every session, whatever the server's default): when ``charge`` returns, the
charge is on the database's disk, whichever node took it. Amounts are NUMERIC, read back as
Decimal.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import asyncpg

from nember_core.plugin_api import AlreadyExists, Charge, ConnectionUsage, utcnow

from .db import affected
from .migrations import SchemaStore

COMPONENT = "billing"
MIGRATIONS = [
    # 1
    """
    CREATE TABLE nember_charges (
        connection_id text PRIMARY KEY,
        account_id text NOT NULL,
        key_id text NOT NULL,
        amount numeric NOT NULL,
        currency text NOT NULL,
        charged_at timestamptz NOT NULL
    );
    CREATE INDEX nember_charges_account ON nember_charges (account_id, charged_at);
    CREATE TABLE nember_usage (
        connection_id text PRIMARY KEY REFERENCES nember_charges (connection_id),
        account_id text NOT NULL,
        key_id text NOT NULL,
        remote text NOT NULL,
        opened_at timestamptz NOT NULL,
        closed_at timestamptz,
        close_code integer,
        close_reason text,
        predictions bigint NOT NULL DEFAULT 0,
        errors bigint NOT NULL DEFAULT 0
    );
    CREATE INDEX nember_usage_account ON nember_usage (account_id, opened_at);
    -- The rows still open (live, or of a node killed outright) stay cheap to find.
    CREATE INDEX nember_usage_unclosed ON nember_usage (opened_at) WHERE closed_at IS NULL;
    """,
]

CHARGE = """
WITH charged AS (
    INSERT INTO nember_charges (connection_id, account_id, key_id, amount, currency, charged_at)
    VALUES ($1, $2, $3, $4, $5, $6)
    RETURNING connection_id, account_id, key_id
)
INSERT INTO nember_usage (connection_id, account_id, key_id, remote, opened_at)
SELECT connection_id, account_id, key_id, $7, $8 FROM charged"""
_USAGE_COLUMNS = ("connection_id, account_id, key_id, remote, opened_at, closed_at, close_code, "
                  "close_reason, predictions, errors")


def _usage(row: asyncpg.Record) -> ConnectionUsage:
    return ConnectionUsage(*row)


class PostgresBillingLedger(SchemaStore, component=COMPONENT, migrations=MIGRATIONS):
    async def charge(self, usage: ConnectionUsage, amount: Decimal, currency: str) -> Charge:
        charge = Charge(connection_id=usage.connection_id, account_id=usage.account_id,
                        key_id=usage.key_id, amount=Decimal(amount), currency=currency,
                        charged_at=utcnow())
        try:
            # One statement: atomic by itself (both rows or neither), and one round trip on
            # the way to "Valid API key.".
            await self._db.execute(
                CHARGE, charge.connection_id, charge.account_id, charge.key_id, charge.amount,
                currency, charge.charged_at, usage.remote, usage.opened_at)
        except asyncpg.UniqueViolationError:
            raise AlreadyExists(f"connection {usage.connection_id} is already charged") from None
        return charge

    async def record_usage(self, usage: ConnectionUsage) -> None:
        await self._update_usage(usage, "")

    async def close_abandoned(self, usage: ConnectionUsage) -> bool:
        # Only a row still open: the connection's own process may have recorded its end.
        return await self._update_usage(usage, " AND closed_at IS NULL") == 1

    async def _update_usage(self, usage: ConnectionUsage, condition: str) -> int:
        status = await self._db.execute(
            "UPDATE nember_usage SET closed_at = $1, close_code = $2, close_reason = $3, "
            f"predictions = $4, errors = $5 WHERE connection_id = $6{condition}",
            usage.closed_at, usage.close_code, usage.close_reason, usage.predictions,
            usage.errors, usage.connection_id)
        return affected(status)

    async def charges(self, account_id: str) -> list[Charge]:
        rows = await self._db.fetch(
            "SELECT connection_id, account_id, key_id, amount, currency, charged_at "
            "FROM nember_charges WHERE account_id = $1 ORDER BY charged_at, connection_id",
            account_id)
        return [Charge(*row) for row in rows]

    async def usage(self, account_id: str) -> list[ConnectionUsage]:
        rows = await self._db.fetch(
            f"SELECT {_USAGE_COLUMNS} FROM nember_usage WHERE account_id = $1 "
            "ORDER BY opened_at, connection_id", account_id)
        return [_usage(row) for row in rows]

    async def unclosed_usage(self, opened_before: datetime, limit: int,
                             opened_after: datetime | None = None) -> list[ConnectionUsage]:
        # Two statements rather than "$2 IS NULL OR ...": each plans onto the partial index.
        if opened_after is None:
            rows = await self._db.fetch(
                f"SELECT {_USAGE_COLUMNS} FROM nember_usage WHERE closed_at IS NULL "
                "AND opened_at < $1 ORDER BY opened_at LIMIT $2", opened_before, limit)
        else:
            rows = await self._db.fetch(
                f"SELECT {_USAGE_COLUMNS} FROM nember_usage WHERE closed_at IS NULL "
                "AND opened_at < $1 AND opened_at > $2 ORDER BY opened_at LIMIT $3",
                opened_before, opened_after, limit)
        return [_usage(row) for row in rows]
