"""An account's live connections, on every server process, and closing one."""

from __future__ import annotations

from nember_core.errors import NotFound
from nember_core.records import LiveConnection
from nember_core.serving.protocol import CLOSED_BY_OWNER
from nember_core.stores import Stores


class Connections:
    def __init__(self, stores: Stores):
        self._registry = stores.registry

    async def list(self, account_id: str) -> list[LiveConnection]:
        live = await self._registry.list(account_id)
        return sorted(live, key=lambda conn: conn.opened_at)

    async def close(self, account_id: str, connection_id: str) -> None:
        """Close with 4000, wherever it lives; NotFound unless it is the account's and live."""
        mine = {conn.id for conn in await self._registry.list(account_id)}
        if connection_id not in mine or not await self._registry.close_connection(
            connection_id, CLOSED_BY_OWNER, "closed by owner"
        ):
            raise NotFound(f"no live connection {connection_id}")
