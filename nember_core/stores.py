"""The stores a running Nember uses: one opened plugin instance per config role."""

from __future__ import annotations

import attrs
import structlog

from .plugin_api import (
    BillingLedger,
    ConnectionRegistry,
    JobBoard,
    KeyStore,
    ModelAnnounced,
    ModelAnnouncements,
    ModelKey,
    ModelStore,
)

log = structlog.get_logger("nember.stores")


@attrs.define
class Stores:
    node: str  # this server's name in the connection registry
    key_store: KeyStore
    billing: BillingLedger
    model_store: ModelStore
    registry: ConnectionRegistry
    jobs: JobBoard

    async def announce_model(self, key: ModelKey, version: int | None) -> None:
        """Tell every server that ``key`` changed, when the registry can (else they poll).
        Never raises: a lost announcement costs a poll interval."""
        if not isinstance(self.registry, ModelAnnouncements):
            return
        try:
            await self.registry.announce_model(key, version)
        except Exception as exc:
            log.warning("model.announce_failed", family=key.family, version=version,
                        error=f"{type(exc).__name__}: {exc}"[:200])

    def on_model_announced(self, listener: ModelAnnounced) -> bool:
        """Hear of every model announced; False when the registry doesn't announce."""
        if not isinstance(self.registry, ModelAnnouncements):
            return False
        self.registry.on_model_announced(listener)
        return True

    async def close(self) -> None:
        for store in (self.jobs, self.registry, self.model_store, self.billing, self.key_store):
            await store.close()
