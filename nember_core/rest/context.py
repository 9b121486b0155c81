"""What the REST handlers reach: the services, the model cache and the training jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs
from aiohttp import web

from ..config import Config
from ..jobs import TrainingJobs
from ..services import Nember, Services


@attrs.define
class ApiContext:
    nember: Nember
    services: Services
    jobs: TrainingJobs

    @property
    def config(self) -> Config:
        return self.nember.config


API = web.AppKey("api", ApiContext)


def iso(moment: datetime | None) -> str | None:
    """ISO 8601, UTC, with microseconds, as every time in the API is written."""
    return None if moment is None else moment.isoformat(timespec="microseconds")


def items(values: list[Any]) -> web.Response:
    return web.json_response({"items": values})
