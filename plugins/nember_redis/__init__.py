"""A connection registry on Redis, shared by every node (PROTOCOL §5): ``connection_registry:
{plugin: redis, url: "redis://cache.internal:6379/0"}``. Needs ``pip install 'nember[redis]'``;
the package is imported only when the config picks this plugin."""

from __future__ import annotations

from urllib.parse import urlsplit

import attrs

from nember_core.plugin_api import NemberError, PluginContext, Provider, hookimpl

from .registry import STALE_AFTER, RedisConnectionRegistry, brief

# A killed node's connections must leave listings within 15 s (PROTOCOL §5); its keys expire
# STALE_AFTER heartbeats after its last one.
MAX_HEARTBEAT = 2.0


def _url_ok(value: str) -> bool:
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises on a port that is no number
    except ValueError:
        return False
    database = parts.path.strip("/")  # the client would quietly use 0 for "/x"
    return (parts.scheme in ("redis", "rediss") and bool(parts.hostname)
            and (database == "" or database.isdigit()))


def _check_url(instance, attribute, value: str) -> None:
    if not _url_ok(value):  # never echoed: it may hold a password
        raise ValueError("url: expected redis://HOST[:PORT][/DB] or rediss://... (TLS)")


def _check_prefix(instance, attribute, value: str) -> None:
    if not value.strip():
        raise ValueError("prefix: expected a non-empty string such as 'nember:'")


def _check_heartbeat(instance, attribute, value: float) -> None:
    if not 0 < value <= MAX_HEARTBEAT:
        raise ValueError(
            f"heartbeat: expected a number of seconds > 0 and <= {MAX_HEARTBEAT:g} (a killed "
            f"node's connections leave listings after {STALE_AFTER} heartbeats)")


def _check_timeout(instance, attribute, value: float) -> None:
    if not value > 0:
        raise ValueError("timeout: expected a number of seconds > 0")


@attrs.frozen
class RedisOptions:
    url: str = attrs.field(validator=_check_url, metadata={
        "doc": "the Redis server: redis://[:PASSWORD@]HOST[:PORT][/DB], or rediss:// for TLS"})
    prefix: str = attrs.field(default="nember:", validator=_check_prefix, metadata={
        "doc": "put before every key and channel, so that deployments can share one Redis"})
    heartbeat: float = attrs.field(default=1.0, validator=_check_heartbeat, metadata={
        "doc": f"seconds between heartbeats, at most {MAX_HEARTBEAT:g}; a killed node's "
               f"connections leave listings after {STALE_AFTER} of them"})
    timeout: float = attrs.field(default=2.0, validator=_check_timeout, metadata={
        "doc": "seconds any one call to Redis may take; past it the call fails (a new "
               "connection is refused with 1013) rather than hang"})


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}{parts.path}"  # no password


async def _create(options: RedisOptions, context: PluginContext) -> RedisConnectionRegistry:
    try:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
    except ImportError:
        raise NemberError("connection_registry: the redis plugin needs the redis package: "
                          "pip install 'nember[redis]'") from None
    try:
        client = aioredis.from_url(
            options.url,
            decode_responses=True,
            socket_timeout=options.timeout,
            socket_connect_timeout=options.timeout,
            # One quick retry for a pooled connection that a restart dropped; none after a
            # timeout, which would double the wait.
            retry=Retry(NoBackoff(), 1, (RedisConnectionError,)),
        )
    except ValueError as exc:  # a malformed URL (a database that is no number...)
        raise NemberError(f"connection_registry.url: {exc}") from None
    try:
        return await RedisConnectionRegistry.open(
            client, context.node, options.prefix, options.heartbeat, options.timeout
        )
    except Exception as exc:
        raise NemberError(
            f"connection_registry: Redis at {_where(options.url)} failed: {brief(exc)}"
        ) from None


@hookimpl
def nember_connection_registries():
    return [Provider(name="redis", create=_create, options=RedisOptions,
                     shared_across_processes=True,
                     backup_note="holds only live connections: nothing to back up")]
