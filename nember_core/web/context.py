"""What the web handlers reach: the service layer and the config."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs
from aiohttp import web

from nember_core.config import Config
from nember_core.services import Services


@attrs.frozen
class WebContext:
    services: Services
    config: Config


CONTEXT = web.AppKey("nember", WebContext)


def services(request: web.Request) -> Services:
    return request.app[CONTEXT].services


def iso(moment: datetime | None) -> str | None:
    """ISO 8601, UTC, with microseconds, as every time in the API is written."""
    return None if moment is None else moment.isoformat(timespec="microseconds")


def items(values: list[Any]) -> web.Response:
    return web.json_response({"items": values})
