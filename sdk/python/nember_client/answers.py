"""The server's answers as typed, immutable records."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

NEW_MODEL = "New model configuration added, prediction made"

# Python 3.10's fromisoformat takes neither "Z" nor a fraction of other than 3 or 6 digits.
_ISO = re.compile(r"^(?P<base>[^.]+?)(?:\.(?P<fraction>\d+))?(?P<zone>Z|[+-]\d\d:?\d\d)?$")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Which model answered (asked for with ``details=True``)."""

    version: int
    trained_at: datetime  # time-zone aware, UTC
    age_seconds: float  # how long ago it was trained, when it answered


@dataclass(frozen=True, slots=True)
class Prediction:
    """One successful answer.

    ``probabilities``, ``model`` and ``in_distribution`` are ``None`` unless the request
    asked for them (``in_distribution`` is also ``None`` for models trained before the
    server kept their training ranges).
    """

    prediction: Any  # the class label as in the training data (str or number), or a float
    seq_num: int  # the request's number on its connection, from 1; restarts on reconnect
    new_model: bool  # the first answer of this model (or of a new version) on the connection
    probabilities: dict[str, float] | None
    model: ModelInfo | None
    in_distribution: bool | None
    request_id: Any


def parse_time(text: str) -> datetime:
    """An ISO 8601 time as the server writes it, as an aware datetime (UTC if unzoned)."""
    found = _ISO.match(text.strip())
    if found is None:
        raise ValueError(f"not an ISO 8601 time: {text!r}")
    fraction = (found["fraction"] or "")[:6].ljust(6, "0")
    zone = found["zone"] or "Z"
    zone = "+00:00" if zone == "Z" else f"{zone[:3]}:{zone[-2:]}"
    moment = datetime.fromisoformat(f"{found['base']}.{fraction}{zone}")
    return moment.astimezone(timezone.utc)


def prediction(answer: dict[str, Any], request_id: Any) -> Prediction:
    """The record of a success answer."""
    model = answer.get("model")
    return Prediction(
        prediction=answer.get("prediction"),
        seq_num=answer["seq_num"],
        new_model=answer.get("message") == NEW_MODEL,
        probabilities=answer.get("probabilities"),
        model=None if model is None else ModelInfo(
            version=model["version"],
            trained_at=parse_time(model["trained_at"]),
            age_seconds=float(model["age_seconds"]),
        ),
        in_distribution=answer.get("in_distribution"),
        request_id=request_id,
    )
