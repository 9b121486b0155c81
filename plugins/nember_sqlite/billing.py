"""The billing ledger in SQLite: one charge per accepted connection, and its usage."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from nember_core.plugin_api import AlreadyExists, Charge, ConnectionUsage, utcnow

from .db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    connection_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    amount TEXT NOT NULL,
    currency TEXT NOT NULL,
    charged_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS charges_account ON charges(account_id, charged_at);
CREATE TABLE IF NOT EXISTS usage (
    connection_id TEXT PRIMARY KEY REFERENCES charges(connection_id),
    account_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    remote TEXT NOT NULL,
    opened_at TEXT NOT NULL,
    closed_at TEXT,
    close_code INTEGER,
    close_reason TEXT,
    predictions INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS usage_account ON usage(account_id, opened_at);
"""

MIGRATIONS = [
    # 1: finding the rows still open (live, or of a process killed outright) stays cheap.
    "CREATE INDEX usage_unclosed ON usage(opened_at) WHERE closed_at IS NULL",
]
_USAGE_COLUMNS = ("connection_id, account_id, key_id, remote, opened_at, closed_at, close_code, "
                  "close_reason, predictions, errors")


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


_UPDATE_USAGE = ("UPDATE usage SET closed_at = ?, close_code = ?, close_reason = ?, "
                 "predictions = ?, errors = ? WHERE connection_id = ?")


def _usage_update(usage: ConnectionUsage) -> tuple:
    return (usage.closed_at.isoformat() if usage.closed_at else None, usage.close_code,
            usage.close_reason, usage.predictions, usage.errors, usage.connection_id)


def _usage(row) -> ConnectionUsage:
    return ConnectionUsage(row[0], row[1], row[2], row[3], _time(row[4]), _time(row[5]), *row[6:])


class SqliteBillingLedger:
    def __init__(self, db: Database):
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> SqliteBillingLedger:
        return cls(await Database.open(path, SCHEMA, migrations=MIGRATIONS))

    async def ping(self) -> None:
        await self._db.ping()

    async def close(self) -> None:
        await self._db.close()

    async def charge(self, usage: ConnectionUsage, amount: Decimal, currency: str) -> Charge:
        charge = Charge(
            connection_id=usage.connection_id,
            account_id=usage.account_id,
            key_id=usage.key_id,
            amount=Decimal(amount),
            currency=currency,
            charged_at=utcnow(),
        )
        try:
            # The charge and the open usage row land together, fsynced before this returns;
            # the charges of connections accepted meanwhile share the commit.
            await self._db.commit_together([
                ("INSERT INTO charges VALUES (?, ?, ?, ?, ?, ?)",
                 (charge.connection_id, charge.account_id, charge.key_id, str(charge.amount),
                  currency, charge.charged_at.isoformat())),
                ("INSERT INTO usage (connection_id, account_id, key_id, remote, opened_at) "
                 "VALUES (?, ?, ?, ?, ?)",
                 (usage.connection_id, usage.account_id, usage.key_id, usage.remote,
                  usage.opened_at.isoformat())),
            ])
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"connection {usage.connection_id} is already charged") from None
        return charge

    async def record_usage(self, usage: ConnectionUsage) -> None:
        # Connections that end together (a storm of reconnects) share a commit too.
        await self._db.commit_together([(_UPDATE_USAGE, _usage_update(usage))])

    async def close_abandoned(self, usage: ConnectionUsage) -> bool:
        def close(db: sqlite3.Connection) -> bool:
            return db.execute(_UPDATE_USAGE + " AND closed_at IS NULL",
                              _usage_update(usage)).rowcount == 1
        return await self._db.transaction(close)

    async def charges(self, account_id: str) -> list[Charge]:
        rows = await self._db.read(
            "SELECT connection_id, account_id, key_id, amount, currency, charged_at FROM charges "
            "WHERE account_id = ? ORDER BY charged_at",
            (account_id,),
        )
        return [Charge(r[0], r[1], r[2], Decimal(r[3]), r[4], _time(r[5])) for r in rows]

    async def usage(self, account_id: str) -> list[ConnectionUsage]:
        rows = await self._db.read(
            f"SELECT {_USAGE_COLUMNS} FROM usage WHERE account_id = ? ORDER BY opened_at",
            (account_id,),
        )
        return [_usage(row) for row in rows]

    async def unclosed_usage(self, opened_before: datetime, limit: int,
                             opened_after: datetime | None = None) -> list[ConnectionUsage]:
        after = opened_after.isoformat() if opened_after else ""
        rows = await self._db.read(
            f"SELECT {_USAGE_COLUMNS} FROM usage WHERE closed_at IS NULL AND opened_at < ? "
            "AND opened_at > ? ORDER BY opened_at LIMIT ?",
            (opened_before.isoformat(), after, limit),
        )
        return [_usage(row) for row in rows]
