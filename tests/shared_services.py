"""The machine's PostgreSQL and Redis, for tests of the stores that several nodes share.

Every machine of this project runs PostgreSQL 15 (127.0.0.1:5432, trust auth, database
``test``) and Redis 7 (127.0.0.1:6379); ``NEMBER_TEST_POSTGRES`` and ``NEMBER_TEST_REDIS``
point elsewhere. Each test gets a database of its own (created empty, dropped after) and a
Redis key prefix of its own, so tests never see each other's rows. Without the service a test
skips with the reason, except in CI (``CI=true``), where a missing service is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

POSTGRES = os.environ.get("NEMBER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("NEMBER_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _listening(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1",
                                       parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def require(service: str, url: str, default_port: int) -> None:
    """Skip (fail in CI) unless ``service`` answers at ``url``."""
    if _listening(url, default_port):
        return
    message = f"{service} is not reachable at {url}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI must run it (.ci/run starts it)", pytrace=False)
    pytest.skip(message)


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """The DSN of a new, empty database on the machine's PostgreSQL, dropped after."""
    require("PostgreSQL", POSTGRES, 5432)
    name = f"nember_test_{secrets.token_hex(4)}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(POSTGRES, name)
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def database_for_processes() -> Iterator[str]:
    """``fresh_database`` outside an event loop: for module fixtures that start servers."""
    require("PostgreSQL", POSTGRES, 5432)
    name = f"nember_test_{secrets.token_hex(4)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(POSTGRES, name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.asynccontextmanager
async def fresh_redis_prefix() -> AsyncIterator[str]:
    """A key prefix of its own on the machine's Redis; its keys are deleted after."""
    import redis.asyncio as redis

    require("Redis", REDIS, 6379)
    prefix = f"nember-test-{secrets.token_hex(4)}:"
    try:
        yield prefix
    finally:
        client = redis.from_url(REDIS)
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


@pytest.fixture
async def postgres_dsn() -> AsyncIterator[str]:
    """The DSN of a new, empty database, dropped after the test."""
    async with fresh_database() as dsn:
        yield dsn


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """The machine's Redis; use with ``redis_prefix`` so that tests never share keys."""
    require("Redis", REDIS, 6379)
    yield REDIS


@pytest.fixture
async def redis_prefix(redis_url) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted after the test."""
    async with fresh_redis_prefix() as prefix:
        yield prefix


@contextlib.contextmanager
def redis_prefix_for_processes() -> Iterator[str]:
    """``fresh_redis_prefix`` outside an event loop: for module fixtures that start servers."""
    import redis

    require("Redis", REDIS, 6379)
    prefix = f"nember-test-{secrets.token_hex(4)}:"
    try:
        yield prefix
    finally:
        client = redis.from_url(REDIS)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
