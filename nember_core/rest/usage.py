"""``/api/usage``: charges and counts per connection and per day, with totals (or CSV)."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

from aiohttp import web

from .auth import caller
from .context import API, iso

CSV_COLUMNS = ("connection_id", "key_id", "remote", "opened_at", "closed_at", "close_code",
               "close_reason", "predictions", "errors", "amount", "currency")


async def usage(request: web.Request) -> web.Response:
    me = await caller(request)
    services = request.app[API].services
    currency = request.app[API].config.billing.currency
    charges = {c.connection_id: c for c in await services.billing.charges(me.account_id)}
    live = {c.id: c for c in await services.registry.list(me.account_id)}
    rows = []
    for record in await services.billing.usage(me.account_id):
        now = live.get(record.connection_id)  # still open here: its counters are live
        charge = charges.get(record.connection_id)
        rows.append({
            "connection_id": record.connection_id,
            "key_id": record.key_id,
            "remote": record.remote,
            "opened_at": iso(record.opened_at),
            "closed_at": iso(record.closed_at),
            "close_code": record.close_code,
            "close_reason": record.close_reason,
            "live": now is not None,
            "predictions": now.predictions if now else record.predictions,
            "errors": now.errors if now else record.errors,
            "amount": str(charge.amount) if charge else "0",
            "currency": charge.currency if charge else currency,
        })
    if request.query.get("format") == "csv":
        return _csv(rows)

    days: dict[str, dict] = {}
    for row in rows:
        day = days.setdefault(row["opened_at"][:10], {
            "day": row["opened_at"][:10], "connections": 0, "predictions": 0, "errors": 0,
            "amount": Decimal(0),
        })
        day["connections"] += 1
        day["predictions"] += row["predictions"]
        day["errors"] += row["errors"]
        day["amount"] += Decimal(row["amount"])
    totals = {
        "connections": len(rows),
        "predictions": sum(r["predictions"] for r in rows),
        "errors": sum(r["errors"] for r in rows),
        "amount": str(sum((Decimal(r["amount"]) for r in rows), Decimal(0))),
    }
    return web.json_response({
        "currency": currency,
        "items": rows,
        "days": [{**d, "amount": str(d["amount"])} for d in sorted(days.values(),
                                                                   key=lambda d: d["day"])],
        "totals": totals,
    })


def _csv(rows: list[dict]) -> web.Response:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="nember-usage.csv"'},
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/usage", usage)
