"""Connection pools, one per DSN per process, and the bounded calls every store makes.

A node whose four roles name one database opens one pool, not four: each store holds a
reference to it and the last to close closes it (roles that set another ``pool_size`` or
``timeout`` for the same DSN get a pool of their own, as they asked).

Every call is bounded by the store's ``timeout`` (waiting for a connection, connecting, each
statement): a database that hangs fails the call instead of holding it forever, so the
gateway can answer 1013 and move on.
A connection the server dropped is replaced by the pool at the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import attrs
import structlog

from nember_core.plugin_api import StoreUnavailable

from .options import PostgresOptions, PostgresStoreError, redact

log = structlog.get_logger("nember.postgres")

# Failures of the database rather than of a statement: down, unreachable, too slow.
UNREACHABLE = (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError,
               asyncpg.InterfaceError, asyncpg.CannotConnectNowError)


@attrs.define(eq=False)
class _SharedPool:
    opening: asyncio.Task  # of the asyncpg.Pool
    users: int = 0


# (event loop, dsn, pool_size, timeout) -> the pool those stores share
_pools: dict[tuple, _SharedPool] = {}


async def _create_pool(options: PostgresOptions) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            options.dsn,
            min_size=1,  # connects now: a wrong DSN stops start-up, not the first bot
            max_size=options.pool_size,
            timeout=options.timeout,  # connecting
            command_timeout=options.timeout,  # each statement
            # Charges are durable before a bot hears "Valid API key.": never let a server
            # default of synchronous_commit=off make them otherwise.
            server_settings={"synchronous_commit": "on"},
        )
    except asyncio.TimeoutError:
        raise PostgresStoreError(
            f"postgres: cannot connect to {redact(options.dsn)}: no answer within "
            f"{options.timeout:g} s (timeout)") from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        raise PostgresStoreError(
            f"postgres: cannot connect to {redact(options.dsn)}: "
            f"{_safe(str(exc) or type(exc).__name__, options.dsn)}"
        ) from None
    log.info("postgres.pool_opened", dsn=redact(options.dsn), size=options.pool_size)
    return pool


def _safe(message: str, dsn: str) -> str:
    """``message`` without the DSN's password, should a driver ever quote it."""
    try:
        password = urlsplit(dsn).password
    except ValueError:
        password = None
    return message.replace(password, "***") if password else message


async def open_database(options: PostgresOptions) -> Database:
    """A store's handle on the process's pool for ``options.dsn`` (opened if none is)."""
    key = (asyncio.get_running_loop(), options.dsn, options.pool_size, options.timeout)
    shared = _pools.get(key)
    if shared is None:
        shared = _pools[key] = _SharedPool(asyncio.ensure_future(_create_pool(options)))
    shared.users += 1
    try:
        # Shielded: one opener cancelled must not cancel the pool the others wait for.
        pool = await asyncio.shield(shared.opening)
    except BaseException:
        await _release(key, shared, options.timeout)
        raise
    return Database(pool, options.timeout, lambda: _release(key, shared, options.timeout))


async def _release(key: tuple, shared: _SharedPool, timeout: float) -> None:
    shared.users -= 1
    if shared.users > 0:
        return
    if _pools.get(key) is shared:
        del _pools[key]
    if not shared.opening.done():
        shared.opening.cancel()
        return
    if shared.opening.cancelled() or shared.opening.exception() is not None:
        return
    pool: asyncpg.Pool = shared.opening.result()
    try:
        await asyncio.wait_for(pool.close(), timeout)
    except (asyncio.TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        pool.terminate()  # a connection still busy, or a server gone: drop them all
    log.info("postgres.pool_closed", dsn=redact(key[1]))


class Database:
    """One store's bounded calls on a shared pool."""

    def __init__(self, pool: asyncpg.Pool, timeout: float, release):
        self.pool = pool
        self.timeout = timeout
        self._release = release
        self._closed = False

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self.pool.acquire(timeout=self.timeout) as conn:
                yield conn
        except UNREACHABLE as exc:  # not the query's fault: the database's, for now
            raise StoreUnavailable(f"postgres: {type(exc).__name__}: {exc}"[:300]) from exc

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection inside a transaction: committed on a normal exit, rolled back on any
        other (cancellation included)."""
        async with self.connection() as conn, conn.transaction():
            yield conn

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self.connection() as conn:
            return await conn.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        async with self.connection() as conn:
            return await conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async with self.connection() as conn:
            return await conn.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        async with self.connection() as conn:
            return await conn.execute(sql, *args)

    async def close(self) -> None:
        if not self._closed:  # a store closed twice must not release another's reference
            self._closed = True
            await self._release()


def affected(status: str) -> int:
    """The row count of a command's status (``UPDATE 1`` -> 1)."""
    return int(status.rsplit(" ", 1)[-1])
