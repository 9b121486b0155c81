"""A connection registry of this process's live connections, in memory: no I/O at all.

Enough for one server process; the default SQLite registry (``plugin: sqlite``) is shared by
every process on the machine (``--workers``), and a networked one (Redis) would let several
machines enforce limits and close each other's connections.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable

from nember_core.plugin_api import (
    CloseConnection,
    LiveConnection,
    PluginContext,
    Provider,
    hookimpl,
)


class MemoryConnectionRegistry:
    def __init__(self) -> None:
        self._by_id: dict[str, CloseConnection] = {}
        self._by_account: dict[str, dict[str, LiveConnection]] = defaultdict(dict)
        self._closing: set[asyncio.Task] = set()

    async def add(self, conn: LiveConnection, limit: int, close: CloseConnection) -> bool:
        live = self._by_account[conn.account_id]
        if len(live) >= limit:
            return False
        live[conn.id] = conn
        self._by_id[conn.id] = close
        return True

    async def remove(self, conn: LiveConnection) -> None:
        self._by_id.pop(conn.id, None)
        live = self._by_account.get(conn.account_id)
        if live is not None:
            live.pop(conn.id, None)
            if not live:
                del self._by_account[conn.account_id]

    async def list(self, account_id: str) -> list[LiveConnection]:
        return list(self._by_account.get(account_id, {}).values())

    async def close_connection(self, connection_id: str, code: int, reason: str) -> bool:
        close = self._by_id.get(connection_id)
        if close is None:
            return False
        # Start the close handshake and return: a slow peer must not hold up the caller.
        task = asyncio.create_task(close(code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return True

    async def live_among(self, connection_ids: Iterable[str]) -> set[str]:
        return {conn_id for conn_id in connection_ids if conn_id in self._by_id}

    async def ping(self) -> None:
        return None  # in this process's memory: always there

    async def close(self) -> None:
        self._by_id.clear()
        self._by_account.clear()


def _create(options: None, context: PluginContext) -> MemoryConnectionRegistry:
    return MemoryConnectionRegistry()


@hookimpl
def nember_connection_registries():
    return [Provider(name="memory", create=_create, shared_across_processes=False,
                     backup_note="holds only live connections, in memory: nothing to back up")]
