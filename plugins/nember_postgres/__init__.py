"""Stores on PostgreSQL, shared by every node (PROTOCOL §5): key store, billing ledger, model
store (model files included: no shared disk) and the training-job board.

    key_store: {plugin: postgres, dsn: "postgresql://nember@db.internal:5432/nember"}

Roles naming the same DSN share one connection pool per process. Each role's tables are a
component with versioned migrations (``migrations.py``), applied when a store starts
(``migrate: true``, the default) or by ``nember db upgrade``. Needs asyncpg, the ``postgres``
extra: ``pip install 'nember[postgres]'``; the plugin loads without it, and says so when a
store is configured.
"""

from __future__ import annotations

import importlib

from nember_core.plugin_api import PluginContext, Provider, hookimpl

from .options import PostgresOptions, PostgresStoreError

__all__ = ["PostgresOptions", "PostgresStoreError"]


def _require_asyncpg() -> None:
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        raise PostgresStoreError(
            "the postgres plugin needs asyncpg: pip install 'nember[postgres]'") from None


def _provider(module_name: str, class_name: str) -> Provider:
    """The provider of one role, its modules (and asyncpg) imported only when it is used."""

    def load():
        _require_asyncpg()
        return importlib.import_module(f"{__name__}.{module_name}")

    async def create(options: PostgresOptions, context: PluginContext):
        return await getattr(load(), class_name).open(options)

    async def upgrade(options: PostgresOptions, context: PluginContext) -> list[str]:
        module = load()
        from .db import open_database
        from .migrations import prepare

        db = await open_database(options)
        try:
            state = await prepare(db, module.COMPONENT, module.MIGRATIONS, migrate=True)
        finally:
            await db.close()
        return [state.describe()]

    return Provider(name="postgres", create=create, options=PostgresOptions,
                    upgrade=upgrade, backup_note="in PostgreSQL: back it up with pg_dump")


@hookimpl
def nember_key_stores():
    return [_provider("key_store", "PostgresKeyStore")]


@hookimpl
def nember_billing_ledgers():
    return [_provider("billing", "PostgresBillingLedger")]


@hookimpl
def nember_model_stores():
    return [_provider("model_store", "PostgresModelStore")]


@hookimpl
def nember_job_boards():
    return [_provider("job_board", "PostgresJobBoard")]
