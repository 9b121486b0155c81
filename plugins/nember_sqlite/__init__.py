"""The embedded default key store and billing ledger, on SQLite files under ``data_dir``."""

from __future__ import annotations

from pathlib import Path

import attrs

from nember_core import hookimpl
from nember_core.interfaces import PluginContext, Provider

from .billing import SqliteBillingLedger
from .key_store import SqliteKeyStore


@attrs.frozen
class SqliteOptions:
    path: Path | None = None  # default: a file in data_dir


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
