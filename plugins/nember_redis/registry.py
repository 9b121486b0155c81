"""A connection registry on Redis, shared by every node (PROTOCOL §5).

Each server process is an instance (its node name, shown in listings, plus a random id). Its
connections are hashes in Redis, and it keeps its heartbeat key and their hashes alive by
refreshing their TTL every ``heartbeat`` seconds, publishing changed counters on the way; a
process killed outright stops refreshing, and its connections leave every listing when their
keys expire (``STALE_AFTER`` heartbeats). The per-account limit is counted across nodes by
one Lua script. A close request is queued for the instance that holds the socket and
announced on its pub/sub channel; the instance also takes its queue at every heartbeat, so a
wake-up lost while it resubscribes costs a heartbeat, not the request. New model versions are
announced on one channel every instance listens to (``ModelAnnouncements``); one lost while
resubscribing costs the servers' poll interval.

Redis holds only live state: when it restarts empty, or an instance's keys expired during a
stall, the next heartbeat finds its connections' hashes gone and writes them again. While Redis
is unreachable, ``add`` raises (the server refuses new connections with 1013), live connections
are untouched, and the heartbeat keeps trying. Every call is bounded by ``timeout``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Iterable
from datetime import datetime
from typing import Any, TypeVar

import structlog

from nember_core.plugin_api import (
    CloseConnection,
    LiveConnection,
    ModelAnnounced,
    ModelKey,
    StoreUnavailable,
)

from . import scripts

log = structlog.get_logger("nember.registry")
T = TypeVar("T")

STALE_AFTER = 5  # heartbeats: an instance's keys expire this long after its last one
BEAT_CHUNK = 1000  # connections per heartbeat call: no single script holds Redis for long
IDS_CHUNK = 1000  # connection ids per live_among call
RESUBSCRIBE_DELAY = 0.2  # seconds between attempts to subscribe again


class RedisConnectionRegistry:
    def __init__(self, client: Any, node: str, prefix: str, heartbeat: float, timeout: float):
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        self._client = client  # a redis.asyncio.Redis with decode_responses=True
        # Failures of Redis rather than of a call: down, unreachable, too slow.
        self._unreachable = (OSError, asyncio.TimeoutError, RedisConnectionError,
                             RedisTimeoutError)
        self._node = node
        self._instance = f"{node}:{secrets.token_hex(6)}"
        self._prefix = prefix
        self._heartbeat = heartbeat
        self._timeout = timeout
        self._ttl_ms = max(1, round(STALE_AFTER * heartbeat * 1000))
        self._instance_key = f"{prefix}instance:{self._instance}"
        self._closes = f"{prefix}closes:{self._instance}"  # the queue, and the channel
        self._models = f"{prefix}models"  # every instance's channel for model announcements
        self._model_listeners: list[ModelAnnounced] = []
        self._add = client.register_script(scripts.ADD)
        self._list = client.register_script(scripts.LIST)
        self._live_among = client.register_script(scripts.LIVE_AMONG)
        self._close = client.register_script(scripts.CLOSE)
        self._beat_script = client.register_script(scripts.BEAT)
        self._local: dict[str, LiveConnection] = {}  # this instance's connections
        self._closers: dict[str, CloseConnection] = {}  # ...and how to close each
        self._reported: dict[str, tuple] = {}  # their counters as last written
        self._unremoved: dict[str, str] = {}  # id -> account of ended connections to unlist
        self._closing: set[asyncio.Task] = set()
        self._beat_lock = asyncio.Lock()  # the loop's heartbeat and add's rejoin
        self._down_since: float | None = None  # when the heartbeat started failing
        self._beating: asyncio.Task | None = None
        self._listening: asyncio.Task | None = None
        self._resubscribe = False  # the subscription may be dead without knowing it
        self._closed = False

    @classmethod
    async def open(cls, client: Any, node: str, prefix: str = "nember:",
                   heartbeat: float = 1.0, timeout: float = 2.0) -> RedisConnectionRegistry:
        """Register the instance and subscribe to its channel; closes ``client`` and raises
        when Redis does not answer."""
        registry = cls(client, node, prefix, heartbeat, timeout)
        try:
            await registry._beat()
            pubsub = await registry._subscribe()
        except BaseException:
            await client.aclose()
            raise
        registry._beating = asyncio.create_task(registry._beat_forever())
        registry._listening = asyncio.create_task(registry._listen_forever(pubsub))
        return registry

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}:{name}"

    async def _call(self, call: Awaitable[T]) -> T:
        # Redis's socket timeouts bound each read and connect; this bounds the whole call.
        try:
            return await asyncio.wait_for(call, self._timeout)
        except self._unreachable as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}"[:300]) from exc

    async def add(self, conn: LiveConnection, limit: int, close: CloseConnection) -> bool:
        try:
            added = await self._try_add(conn, limit)
            if added < 0:  # this instance's keys are gone: count its connections first
                await self._beat()
                added = await self._try_add(conn, limit)
        except BaseException:
            # The script may have run and its answer been lost: unlist it at the next beat.
            self._unremoved[conn.id] = conn.account_id
            raise
        if added < 0:
            raise ConnectionError("Redis lost this node's registration again")
        if not added:
            return False
        self._unremoved.pop(conn.id, None)
        self._local[conn.id] = conn
        self._closers[conn.id] = close
        return True

    async def _try_add(self, conn: LiveConnection, limit: int) -> int:
        fields = [item for pair in self._fields(conn).items() for item in pair]
        return int(await self._call(self._add(
            keys=[self._key("account", conn.account_id), self._key("connection", conn.id),
                  self._instance_key],
            args=[self._prefix, limit, self._ttl_ms, conn.id, *fields],
        )))

    def _fields(self, conn: LiveConnection) -> dict[str, Any]:
        return {
            "id": conn.id, "instance": self._instance, "node": conn.node,
            "account_id": conn.account_id, "key_id": conn.key_id, "key_name": conn.key_name,
            "remote": conn.remote, "opened_at": conn.opened_at.isoformat(),
            "predictions": conn.predictions, "errors": conn.errors,
            "last_request_at": _text(conn.last_request_at),
        }

    async def remove(self, conn: LiveConnection) -> None:
        self._local.pop(conn.id, None)
        self._closers.pop(conn.id, None)
        self._reported.pop(conn.id, None)
        try:
            await self._unlist({conn.id: conn.account_id})
        except BaseException as exc:  # Redis away: unlisted by a later heartbeat
            self._unremoved[conn.id] = conn.account_id
            if not isinstance(exc, Exception):
                raise
            self._outage(exc)

    async def _unlist(self, connections: dict[str, str]) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            for conn_id, account_id in connections.items():
                pipe.delete(self._key("connection", conn_id))
                pipe.srem(self._key("account", account_id), conn_id)
            await self._call(pipe.execute())

    async def list(self, account_id: str) -> list[LiveConnection]:
        rows = await self._call(self._list(keys=[self._key("account", account_id)],
                                           args=[self._prefix]))
        found = []
        for row in rows:
            fields = dict(zip(row[::2], row[1::2], strict=True))
            local = self._local.get(fields["id"])
            found.append(local if local is not None else _connection(fields))
        # This instance's own are live whatever Redis says (it may have just restarted).
        listed = {conn.id for conn in found}
        found += [conn for conn in list(self._local.values())
                  if conn.account_id == account_id and conn.id not in listed]
        return found

    async def close_connection(self, connection_id: str, code: int, reason: str) -> bool:
        close = self._closers.get(connection_id)
        if close is not None:
            self._start_closing(close, code, reason)
            return True
        request = json.dumps([connection_id, code, reason])
        return bool(await self._call(self._close(
            keys=[self._key("connection", connection_id)],
            args=[self._prefix, connection_id, request, self._ttl_ms],
        )))

    async def live_among(self, connection_ids: Iterable[str]) -> set[str]:
        ids = set(connection_ids)
        live = ids & self._local.keys()
        rest = sorted(ids - live)
        for start in range(0, len(rest), IDS_CHUNK):
            live.update(await self._call(
                self._live_among(args=[self._prefix, *rest[start : start + IDS_CHUNK]])
            ))
        return live

    async def announce_model(self, key: ModelKey, version: int | None) -> None:
        message = json.dumps([key.account_id, key.strat, key.family, key.model_type, version])
        await self._call(self._client.publish(self._models, message))

    def on_model_announced(self, listener: ModelAnnounced) -> None:
        self._model_listeners.append(listener)

    def _tell_listeners(self, data: str) -> None:
        try:
            account_id, strat, family, model_type, version = json.loads(data)
            key = ModelKey(account_id, strat, family, model_type)
        except (ValueError, TypeError) as exc:  # not written by this plugin: ignore it
            log.warning("registry.bad_announcement", error=brief(exc))
            return
        for listener in self._model_listeners:
            try:
                listener(key, version)
            except Exception as exc:  # a listener's bug must not end the subscription
                log.error("registry.listener_failed", error=brief(exc))

    def _start_closing(self, close: CloseConnection, code: int, reason: str) -> None:
        # Start the close handshake and return: a slow peer must not hold up the caller.
        task = asyncio.create_task(close(code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _act_on(self, requests: list[str]) -> None:
        for request in requests:
            conn_id, code, reason = json.loads(request)
            close = self._closers.get(conn_id)
            if close is not None:  # else it ended meanwhile
                self._start_closing(close, code, reason)

    async def _beat_forever(self) -> None:
        # Not ``while True``: redis-py can turn a cancellation into a Redis error (its cleanup
        # on cancel may itself time out), which this loop survives; close() must not hang.
        while not self._closed:
            await asyncio.sleep(self._heartbeat)
            if self._closed:
                break
            try:
                await self._beat()
            except Exception as exc:
                if not self._closed:  # else a cancellation redis-py reported as an error
                    self._outage(exc)

    def _outage(self, exc: Exception) -> None:
        """Log an outage once, not at every heartbeat or ended connection; the next heartbeat
        that succeeds logs the recovery."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.error("registry.store_unreachable", error=brief(exc))

    async def _beat(self) -> None:
        """Say this instance is alive, refresh its connections and publish their changed
        counters, act on close requests, register again what Redis lost, unlist what a
        failed write left listed."""
        async with self._beat_lock:
            conns = list(self._local.values())
            missing: list[str] = []
            for start in range(0, max(len(conns), 1), BEAT_CHUNK):
                chunk = conns[start : start + BEAT_CHUNK]
                args: list[Any] = [self._prefix, self._node, self._ttl_ms]
                changed = {}
                for conn in chunk:
                    counters = (conn.predictions, conn.errors, conn.last_request_at)
                    if self._reported.get(conn.id) == counters:
                        args += [conn.id, conn.account_id, "-", "", ""]
                    else:
                        changed[conn.id] = counters
                        args += [conn.id, conn.account_id, *counters[:2], _text(counters[2])]
                gone, requests = await self._call(self._beat_script(
                    keys=[self._instance_key, self._closes], args=args))
                self._act_on(requests)  # at once: the queue is emptied already
                self._reported.update(
                    (conn_id, c) for conn_id, c in changed.items() if conn_id in self._local)
                missing += gone
            if missing:
                await self._register_again(missing)
            unremoved = {i: a for i, a in self._unremoved.items() if i not in self._local}
            if unremoved:
                await self._unlist(unremoved)
                for conn_id in unremoved:
                    self._unremoved.pop(conn_id, None)
        if self._down_since is not None:
            log.info("registry.store_recovered",
                     seconds=round(time.monotonic() - self._down_since, 1))
            self._down_since = None
            # Its connection may be half-dead without having noticed (no RST came).
            self._resubscribe = True

    async def _register_again(self, ids: list[str]) -> None:
        conns = [self._local[i] for i in ids if i in self._local]
        async with self._client.pipeline(transaction=False) as pipe:
            for conn in conns:
                key, account = self._key("connection", conn.id), self._key("account",
                                                                           conn.account_id)
                pipe.hset(key, mapping=self._fields(conn))
                pipe.pexpire(key, self._ttl_ms)
                pipe.sadd(account, conn.id)
                pipe.pexpire(account, self._ttl_ms)
            await self._call(pipe.execute())
        for conn in conns:
            self._reported[conn.id] = (conn.predictions, conn.errors, conn.last_request_at)
            if conn.id not in self._local:  # removed while being written: unlist it again
                self._unremoved[conn.id] = conn.account_id
        log.warning("registry.rejoined", instance=self._instance, connections=len(conns))

    async def _subscribe(self) -> Any:
        pubsub = self._client.pubsub()
        try:
            await self._call(pubsub.subscribe(self._closes, self._models))
        except BaseException:
            await _quietly(pubsub.aclose())
            raise
        return pubsub

    async def _take_closes(self) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.lrange(self._closes, 0, -1)
            pipe.delete(self._closes)
            requests, _ = await self._call(pipe.execute())
            self._act_on(requests)  # before leaving the block, which awaits

    async def _listen_forever(self, pubsub: Any = None) -> None:
        """Take the close queue whenever its channel says so, and tell the listeners of each
        model announced; subscribe again when the connection drops (Redis restarted)."""
        lost = False
        try:
            while not self._closed:
                try:
                    if self._resubscribe:  # here, not by cancelling this task mid-take
                        self._resubscribe = False
                        if pubsub is not None:
                            await _quietly(pubsub.aclose())
                            pubsub = None
                    if pubsub is None:
                        pubsub = await self._subscribe()
                        await self._take_closes()  # what was queued while unsubscribed
                        if lost:
                            log.info("registry.subscription_restored")
                            lost = False
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=self._heartbeat)
                    if message is None:
                        continue
                    if message["channel"] == self._models:
                        self._tell_listeners(message["data"])
                    else:
                        await self._take_closes()
                except Exception as exc:
                    if not lost and not self._closed:
                        log.warning("registry.subscription_lost", error=brief(exc))
                        lost = True
                    if pubsub is not None:
                        await _quietly(pubsub.aclose())
                        pubsub = None
                    await asyncio.sleep(RESUBSCRIBE_DELAY)
        finally:
            if pubsub is not None:
                await _quietly(pubsub.aclose())

    async def ping(self) -> None:
        await self._call(self._client.ping())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in (self._beating, self._listening) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:  # each ends within a few calls, whatever the cancellation did
            await asyncio.wait(tasks, timeout=self._heartbeat + 4 * self._timeout)
        connections = {c.id: c.account_id for c in self._local.values()} | self._unremoved
        self._local.clear()
        self._closers.clear()
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self._instance_key, self._closes)
                for conn_id, account_id in connections.items():
                    pipe.delete(self._key("connection", conn_id))
                    pipe.srem(self._key("account", account_id), conn_id)
                await self._call(pipe.execute())
        except Exception as exc:  # Redis away: the keys expire by themselves
            log.warning("registry.close_failed", error=brief(exc))
        finally:
            await _quietly(self._client.aclose())


def _connection(fields: dict[str, str]) -> LiveConnection:
    last = fields.get("last_request_at")
    return LiveConnection(
        id=fields["id"], account_id=fields["account_id"], key_id=fields["key_id"],
        key_name=fields["key_name"], remote=fields["remote"], node=fields["node"],
        opened_at=datetime.fromisoformat(fields["opened_at"]),
        predictions=int(fields.get("predictions") or 0), errors=int(fields.get("errors") or 0),
        last_request_at=float(last) if last else None,
    )


def _text(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def brief(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


async def _quietly(call: Awaitable[Any]) -> None:
    """Release a client or subscription whose connection may be dead already."""
    try:
        await asyncio.wait_for(call, 1.0)
    except Exception:
        pass
