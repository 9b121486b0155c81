"""Dropping silent peers (PROTOCOL.md §1.3) with one timer per connection.

aiohttp's own heartbeat reschedules its timer for every frame received: a callback scheduled
and run per frame, a fifth of what a bare echo server spends per message. Here a connection's
timer wakes once per interval and compares two counters the connection keeps anyway (request
frames answered, control frames heard); only a connection silent for a whole interval is
pinged, and one silent for half an interval more is dropped. A dead peer may never send a
close frame, so a drop doesn't wait for one: the transport is aborted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import structlog

log = structlog.get_logger("nember.ws")

LOST = 1006  # what a dropped connection's usage records, as a peer that vanished


class Watched(Protocol):
    """What the heartbeat reads of a connection, and how it pings or drops it."""

    heard: int  # control frames (pings, pongs) received
    busy: bool  # waiting on a model load or a batch: frames queue up unread meanwhile

    async def ping(self) -> None: ...

    def drop(self) -> None: ...


class Heartbeat:
    __slots__ = ("_watched", "_requests", "_interval", "_loop", "_timer", "_seen", "_pinged",
                 "_pinging")

    def __init__(self, watched: Watched, requests: Callable[[], int], interval: float):
        self._watched = watched
        self._requests = requests  # the number of request frames read so far
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._seen = requests() + watched.heard
        self._pinged = False
        self._pinging: asyncio.Task | None = None
        self._timer = self._loop.call_later(interval, self._check)

    def stop(self) -> None:
        self._timer.cancel()
        if self._pinging is not None:
            self._pinging.cancel()

    def _check(self) -> None:
        watched = self._watched
        heard = self._requests() + watched.heard
        if heard != self._seen or watched.busy:
            self._seen, self._pinged = heard, False
            self._timer = self._loop.call_later(self._interval, self._check)
        elif not self._pinged:
            self._pinged = True
            if self._pinging is None or self._pinging.done():
                # A peer that stopped reading blocks this write: it is dropped all the same.
                self._pinging = self._loop.create_task(self._ping())
            self._timer = self._loop.call_later(self._interval / 2, self._check)
        else:
            watched.drop()

    async def _ping(self) -> None:
        try:
            await self._watched.ping()
        except (ConnectionError, RuntimeError) as exc:  # closing already: nothing to keep
            log.debug("heartbeat.ping_failed", error=repr(exc))
