"""Usage: each connection's charge and counts (live ones current), per day, and totals."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import attrs

from nember_core.stores import Stores


@attrs.frozen
class UsageRow:
    connection_id: str
    key_id: str
    remote: str
    opened_at: datetime
    closed_at: datetime | None
    close_code: int | None
    close_reason: str | None
    live: bool
    predictions: int
    errors: int
    amount: Decimal
    currency: str


@attrs.frozen
class UsageDay:
    day: str  # YYYY-MM-DD (UTC)
    connections: int
    predictions: int
    errors: int
    amount: Decimal


@attrs.frozen
class UsageReport:
    currency: str
    rows: list[UsageRow]
    days: list[UsageDay]
    connections: int
    predictions: int
    errors: int
    amount: Decimal


class UsageReports:
    def __init__(self, stores: Stores, currency: str):
        self._stores = stores
        self._currency = currency

    async def report(self, account_id: str) -> UsageReport:
        billing = self._stores.billing
        charges = {c.connection_id: c for c in await billing.charges(account_id)}
        live = {c.id: c for c in await self._stores.registry.list(account_id)}
        rows = []
        for record in await billing.usage(account_id):
            # Still open: its counters are current (a recorded close wins over a listing
            # that a failed removal left behind until its node's next heartbeat).
            now = live.get(record.connection_id) if record.closed_at is None else None
            charge = charges.get(record.connection_id)
            rows.append(UsageRow(
                connection_id=record.connection_id,
                key_id=record.key_id,
                remote=record.remote,
                opened_at=record.opened_at,
                closed_at=record.closed_at,
                close_code=record.close_code,
                close_reason=record.close_reason,
                live=now is not None,
                predictions=now.predictions if now else record.predictions,
                errors=now.errors if now else record.errors,
                amount=charge.amount if charge else Decimal(0),
                currency=charge.currency if charge else self._currency,
            ))
        by_day: dict[str, list[UsageRow]] = {}
        for row in rows:
            by_day.setdefault(row.opened_at.date().isoformat(), []).append(row)
        days = [_summed(UsageDay, group, day=day) for day, group in sorted(by_day.items())]
        return _summed(UsageReport, rows, currency=self._currency, rows=rows, days=days)


def _summed(cls, group: list[UsageRow], **fields):
    """``cls`` with the count, predictions, errors and amount of ``group`` filled in."""
    return cls(connections=len(group), predictions=sum(r.predictions for r in group),
               errors=sum(r.errors for r in group),
               amount=sum((r.amount for r in group), Decimal(0)), **fields)
