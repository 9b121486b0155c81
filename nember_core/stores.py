"""The stores a running Nember uses: one opened plugin instance per config role."""

from __future__ import annotations

import attrs

from .plugin_api import BillingLedger, ConnectionRegistry, JobBoard, KeyStore, ModelStore


@attrs.define
class Stores:
    node: str  # this server's name in the connection registry
    key_store: KeyStore
    billing: BillingLedger
    model_store: ModelStore
    registry: ConnectionRegistry
    jobs: JobBoard

    async def close(self) -> None:
        for store in (self.jobs, self.registry, self.model_store, self.billing, self.key_store):
            await store.close()
