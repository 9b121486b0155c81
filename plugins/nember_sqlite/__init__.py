"""The embedded defaults on SQLite files under ``data_dir``: key store, billing ledger, and the
connection registry that every server process on this machine shares."""

from __future__ import annotations

from pathlib import Path

import attrs

from nember_core import hookimpl
from nember_core.interfaces import PluginContext, Provider

from .billing import SqliteBillingLedger
from .key_store import SqliteKeyStore
from .registry import SqliteConnectionRegistry


@attrs.frozen
class SqliteOptions:
    path: Path | None = None  # default: a file in data_dir


@attrs.frozen
class RegistryOptions:
    path: Path | None = None  # default: data_dir/connections.sqlite3
    heartbeat: float = 1.0  # seconds between a node's heartbeats (and close-request checks)

    def __attrs_post_init__(self):
        if self.heartbeat <= 0:
            raise ValueError("heartbeat: expected a number of seconds > 0")


async def _key_store(options: SqliteOptions, context: PluginContext) -> SqliteKeyStore:
    return await SqliteKeyStore.open(options.path or context.data_dir / "keys.sqlite3")


async def _ledger(options: SqliteOptions, context: PluginContext) -> SqliteBillingLedger:
    return await SqliteBillingLedger.open(options.path or context.data_dir / "billing.sqlite3")


@hookimpl
def nember_key_stores():
    return [Provider(name="sqlite", create=_key_store, options=SqliteOptions)]


@hookimpl
def nember_billing_ledgers():
    return [Provider(name="sqlite", create=_ledger, options=SqliteOptions)]


async def _registry(options: RegistryOptions, context: PluginContext) -> SqliteConnectionRegistry:
    return await SqliteConnectionRegistry.open(
        options.path or context.data_dir / "connections.sqlite3", context.node, options.heartbeat
    )


@hookimpl
def nember_connection_registries():
    return [Provider(name="sqlite", create=_registry, options=RegistryOptions)]
