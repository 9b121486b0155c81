"""The embedded defaults on SQLite files under ``data_dir``: key store, billing ledger, the
connection registry and the training-job board that every server process on this machine
shares."""

from __future__ import annotations

import asyncio
from pathlib import Path

import attrs

from nember_core.plugin_api import PluginContext, Provider, hookimpl

from .billing import SqliteBillingLedger
from .job_board import SqliteJobBoard
from .key_store import SqliteKeyStore
from .registry import SqliteConnectionRegistry


@attrs.frozen
class SqliteOptions:
    path: Path | None = attrs.field(default=None, metadata={
        "doc": "the SQLite file; default: data_dir/{keys,billing,jobs}.sqlite3"})


@attrs.frozen
class RegistryOptions:
    path: Path | None = attrs.field(default=None, metadata={
        "doc": "the SQLite file; default: data_dir/connections.sqlite3"})
    heartbeat: float = attrs.field(default=1.0, metadata={
        "doc": "seconds between heartbeats and close-request checks"})

    def __attrs_post_init__(self):
        if self.heartbeat <= 0:
            raise ValueError("heartbeat: expected a number of seconds > 0")


def _file_backups(default_name: str) -> dict:
    """``backup`` and ``restore`` of the store whose file is ``path``, else
    ``data_dir/default_name`` (SQLite's online backup API, off the event loop)."""

    async def backup(options: SqliteOptions, context: PluginContext, folder: Path) -> list[str]:
        from .backup import backup_file

        path = options.path or context.data_dir / default_name
        return await asyncio.to_thread(backup_file, path, folder)

    async def restore(options: SqliteOptions, context: PluginContext, folder: Path,
                      dry_run: bool) -> list[str]:
        from .backup import restore_file

        path = options.path or context.data_dir / default_name
        return await asyncio.to_thread(restore_file, path, folder, dry_run)

    return {"backup": backup, "restore": restore}


async def _key_store(options: SqliteOptions, context: PluginContext) -> SqliteKeyStore:
    return await SqliteKeyStore.open(options.path or context.data_dir / "keys.sqlite3")


async def _ledger(options: SqliteOptions, context: PluginContext) -> SqliteBillingLedger:
    return await SqliteBillingLedger.open(options.path or context.data_dir / "billing.sqlite3")


@hookimpl
def nember_key_stores():
    return [Provider(name="sqlite", create=_key_store, options=SqliteOptions,
                     default=True, **_file_backups("keys.sqlite3"))]


@hookimpl
def nember_billing_ledgers():
    return [Provider(name="sqlite", create=_ledger, options=SqliteOptions,
                     default=True, **_file_backups("billing.sqlite3"))]


async def _registry(options: RegistryOptions, context: PluginContext) -> SqliteConnectionRegistry:
    return await SqliteConnectionRegistry.open(
        options.path or context.data_dir / "connections.sqlite3", context.node, options.heartbeat
    )


async def _registry_in_use(options: RegistryOptions, context: PluginContext) -> str | None:
    from .backup import registry_in_use
    from .registry import STALE_AFTER

    path = options.path or context.data_dir / "connections.sqlite3"
    return await asyncio.to_thread(registry_in_use, path, STALE_AFTER * options.heartbeat)


@hookimpl
def nember_connection_registries():
    return [Provider(name="sqlite", create=_registry, options=RegistryOptions,
                     default=True, in_use=_registry_in_use,
                     backup_note="holds only live connections: nothing to back up")]


async def _job_board(options: SqliteOptions, context: PluginContext) -> SqliteJobBoard:
    return await SqliteJobBoard.open(options.path or context.data_dir / "jobs.sqlite3")


@hookimpl
def nember_job_boards():
    return [Provider(name="sqlite", create=_job_board, options=SqliteOptions, default=True,
                     **_file_backups("jobs.sqlite3"))]
