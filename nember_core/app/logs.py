"""structlog set up once: JSON lines on stderr (or a console view), never a secret in them."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import orjson
import structlog


def configure(level: str = "info", fmt: str = "json") -> None:
    # One write per line: worker processes share stderr, and lines must not interleave.
    if fmt == "json":  # orjson's bytes, written as they are (structlog's fast set-up)
        renderer: structlog.typing.Processor = structlog.processors.JSONRenderer(
            serializer=orjson.dumps)
        factory: Callable[..., Any] = structlog.BytesLoggerFactory(
            file=sys.stderr.buffer)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        factory = structlog.WriteLoggerFactory(file=sys.stderr)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
