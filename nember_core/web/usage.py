"""``/api/usage``: charges and counts per connection and per day, with totals (or CSV)."""

from __future__ import annotations

import csv
import io

import attrs
from aiohttp import web

from .auth import caller
from .context import iso, services
from .errors import ApiError

CSV_COLUMNS = ("connection_id", "key_id", "remote", "opened_at", "closed_at", "close_code",
               "close_reason", "predictions", "errors", "amount", "currency")


async def usage(request: web.Request) -> web.Response:
    me = await caller(request)
    form = request.query.get("format", "json")
    if form not in ("json", "csv"):
        raise ApiError(400, "'format' must be 'json' or 'csv'.")
    report = await services(request).usage.report(me.account_id)
    rows = [{**attrs.asdict(row), "opened_at": iso(row.opened_at),
             "closed_at": iso(row.closed_at), "amount": str(row.amount)}
            for row in report.rows]
    if form == "csv":
        return _csv(rows)
    return web.json_response({
        "currency": report.currency,
        "items": rows,
        "days": [{**attrs.asdict(day), "amount": str(day.amount)} for day in report.days],
        "totals": {"connections": report.connections, "predictions": report.predictions,
                   "errors": report.errors, "amount": str(report.amount)},
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
