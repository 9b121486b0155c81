"""A websocket connection's life: authenticate, charge, serve predictions, record usage.

Storage is reached only here, at connect and close, through the opened stores; the per-frame
work is in :mod:`nember_core.serving.session`.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import attrs
import structlog
from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

from nember_core import credentials
from nember_core.config import Config
from nember_core.credentials import new_id
from nember_core.metrics import FIGURES
from nember_core.records import ApiKey, LiveConnection, utcnow
from nember_core.stores import Stores

from . import heartbeat, protocol
from .heartbeat import Heartbeat
from .model_cache import ModelCache
from .session import PredictionSession, RateLimiter

log = structlog.get_logger("nember.ws")

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_PING = WSMsgType.PING
_PONG = WSMsgType.PONG
TOO_BIG = WSCloseCode.MESSAGE_TOO_BIG  # 1009
# RFC 6455 §5.2: a server's final, unmasked text frame of n < 126 bytes starts 0x81, n.
_SHORT_TEXT = tuple(bytes((0x81, n)) for n in range(126))
# An open usage row that no live process holds, this long after it opened, is a dead
# process's: a registry forgets such a process within seconds.
ABANDONED_AFTER_SECONDS = 30.0
ABANDONED = (WSCloseCode.ABNORMAL_CLOSURE, "server process ended")  # 1006
SWEEP_PAGE = 500


@attrs.define(eq=False)
class Socket:
    """This node's side of an authenticated connection: the record registries list, the
    websocket, and the close code the server chose (if it closed it); what its heartbeat
    watches (``heartbeat.Watched``)."""

    conn: LiveConnection
    ws: web.WebSocketResponse = attrs.field(repr=False)
    transport: asyncio.Transport | None = attrs.field(default=None, repr=False)
    close_code: int | None = None
    close_reason: str | None = None
    heard: int = 0  # pings and pongs received
    busy: bool = False  # waiting for a model load or a batch

    async def close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        await self.ws.close(code=code, message=reason.encode())

    async def ping(self) -> None:
        await self.ws.ping()

    def drop(self) -> None:
        """Gone silent: closed at once, with no close handshake a dead peer can't finish."""
        if self.close_code is not None or self.transport is None:
            return  # closing already
        self.close_code, self.close_reason = heartbeat.LOST, "connection lost"
        log.info("connection.silent", connection_id=self.conn.id)
        self.transport.abort()


class Gateway:
    def __init__(self, config: Config, stores: Stores, cache: ModelCache):
        self.config = config
        self.stores = stores
        self.cache = cache
        self.sockets: set[web.WebSocketResponse] = set()  # every open socket, authenticated or not
        self.live: dict[str, Socket] = {}  # this node's authenticated connections
        self.closing = False
        self._closers: set[asyncio.Task] = set()  # close handshakes in flight
        self._releasing: set[asyncio.Task] = set()  # connections' ends being recorded

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        server = self.config.server
        ws = web.WebSocketResponse(
            autoping=False,  # pings and pongs reach ``_serve``: they tell the heartbeat the
            # peer is there (aiohttp's own heartbeat costs a callback per frame)
            # aiohttp refuses a frame of exactly its limit; the contract accepts it.
            max_msg_size=server.max_message_size + 1,
            compress=False,  # tiny, frequent frames: compression costs more than it saves
        )
        await ws.prepare(request)
        if self.closing:
            await ws.close(code=protocol.GOING_AWAY, message=b"Server shutting down")
            return ws
        self.sockets.add(ws)
        try:
            accepted = await self._authenticate(ws, request)
            if accepted is not None:
                socket, secret = accepted
                try:
                    await ws.send_frame(protocol.VALID_KEY, _TEXT)
                    await self._serve(socket, secret)
                finally:
                    # Its own task: a cancelled handler (a shutdown past its timeout) must
                    # still leave the registry and record the usage.
                    release = asyncio.ensure_future(self._release(socket))
                    self._releasing.add(release)
                    release.add_done_callback(self._releasing.discard)
                    await asyncio.shield(release)
        except ConnectionError:
            pass  # the peer vanished mid-write; usage is recorded all the same
        finally:
            self.sockets.discard(ws)
        return ws

    async def _authenticate(self, ws: web.WebSocketResponse, request: web.Request):
        remote = request.remote or ""
        try:
            msg = await self._first_frame(ws)
        except asyncio.TimeoutError:
            FIGURES.auth["timeout"] += 1
            log.info("auth.refused", remote=remote, reason="timeout")
            await ws.close(code=protocol.POLICY_VIOLATION, message=b"Authentication timeout")
            return None
        if msg.type not in (_TEXT, _BINARY):
            return None  # closed before authenticating
        secret = msg.data.strip() if msg.type is _TEXT else ""
        key = None
        if secret and len(secret) <= credentials.MAX_KEY_LENGTH:
            try:
                key = await self.stores.key_store.authenticate(secret)
            except Exception as exc:
                return await self._unavailable(ws, "key_store", exc)
        if key is None:
            FIGURES.auth["invalid_key"] += 1
            log.info("auth.refused", remote=remote, reason="invalid key")
            return await self._refuse(ws, protocol.INVALID_KEY, b"Invalid API key")

        if ws.closed:
            return None  # the peer left while its key was checked: nothing to charge
        socket = Socket(self._connection(key, remote), ws, request.transport)
        conn = socket.conn
        limit = self.config.server.max_connections_per_account
        try:
            added = await self.stores.registry.add(conn, limit, socket.close)
        except Exception as exc:
            return await self._unavailable(ws, "connection_registry", exc)
        if not added:
            FIGURES.auth["limit_reached"] += 1
            log.info("auth.refused", remote=remote, key_id=key.id, reason="connection limit")
            return await self._refuse(ws, protocol.LIMIT_REACHED, b"Connection limit reached")
        try:
            billing = self.config.billing
            await self.stores.billing.charge(conn.usage(), billing.price, billing.currency)
        except Exception as exc:  # never served uncharged
            try:
                await self.stores.registry.remove(conn)
            except Exception as also:
                log.error("registry.remove_failed", error=repr(also)[:200])
            return await self._unavailable(ws, "billing", exc)
        self.live[conn.id] = socket
        FIGURES.auth["accepted"] += 1
        FIGURES.connections_open += 1
        log.info(
            "connection.open",
            connection_id=conn.id,
            account_id=conn.account_id,
            key_id=conn.key_id,
            remote=remote,
            node=conn.node,
        )
        return socket, secret

    async def _first_frame(self, ws: web.WebSocketResponse) -> WSMessage:
        """The first frame that isn't a ping or a pong (pings answered), within the
        authentication timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.server.auth_timeout
        while True:
            # A timeout of 0 would mean none: at least a millisecond.
            msg = await ws.receive(timeout=max(deadline - loop.time(), 0.001))
            if msg.type is _PING:
                await ws.pong(msg.data)
            elif msg.type is not _PONG:
                return msg

    async def _refuse(self, ws: web.WebSocketResponse, answer: bytes, reason: bytes,
                      code: int = protocol.POLICY_VIOLATION) -> None:
        await ws.send_frame(answer, _TEXT)
        await ws.close(code=code, message=reason)
        return None

    async def _unavailable(self, ws: web.WebSocketResponse, store: str, exc: Exception) -> None:
        """A store failed while accepting: refused with 1013, not charged (PROTOCOL §5)."""
        FIGURES.auth["unavailable"] += 1
        log.error("auth.store_failed", store=store, error=repr(exc)[:200])
        return await self._refuse(ws, protocol.UNAVAILABLE, b"Try again later",
                                  protocol.TRY_AGAIN_LATER)

    def _connection(self, key: ApiKey, remote: str) -> LiveConnection:
        return LiveConnection(
            id=new_id("conn"),
            account_id=key.account_id,
            key_id=key.id,
            key_name=key.name,
            remote=remote,
            node=self.stores.node,
            opened_at=utcnow(),
        )

    async def _serve(self, socket: Socket, secret: str) -> None:
        limits = self.config.server.rate_limit
        session = PredictionSession(
            socket.conn, secret, self.cache, RateLimiter(limits.per_second, limits.burst)
        )
        ws = socket.ws
        beat = Heartbeat(socket, lambda: session.seq, self.config.server.heartbeat)
        receive, send, answer = ws.receive, ws.send_frame, session.answer
        clock, observe = time.perf_counter, FIGURES.observe
        transport = socket.transport
        try:
            while True:
                msg = await receive()
                began = clock()
                kind = msg.type
                if kind is not _TEXT and kind is not _BINARY:
                    if kind is _PING or kind is _PONG:
                        socket.heard += 1
                        if kind is _PING:
                            await ws.pong(msg.data)
                        continue
                    if kind is WSMsgType.ERROR and getattr(msg.data, "code", None) == TOO_BIG:
                        # aiohttp closed with 1009; its failing close handshake then reports
                        # 1006.
                        socket.close_code, socket.close_reason = TOO_BIG, "message too big"
                    return  # close, error or connection lost
                out = answer(msg.data, kind is _TEXT)
                if type(out) is not bytes:  # a model to look up, or a prediction in a batch
                    # ``bytes`` isn't final, so mypy can't take it out of ``out``'s type on
                    # ``type(out) is not bytes``; the answers are exact bytes (orjson.dumps).
                    socket.busy = True
                    try:
                        out = await session.complete(out, msg.data)  # type: ignore[arg-type]
                    finally:
                        socket.busy = False
                # Almost every answer: a short text frame written straight to an idle
                # transport (its 2-byte header here), without aiohttp's two coroutines per
                # frame: 1.5-2.5 µs of the server's CPU per answer at 64 connections. A longer
                # answer, a closing socket or a peer behind on its reads goes through
                # aiohttp's writer, which refuses to write after a close frame and waits for
                # the peer to drain.
                if (len(out) < 126 and transport is not None and not ws.closed
                        and not transport.is_closing() and not transport.get_write_buffer_size()):
                    transport.write(_SHORT_TEXT[len(out)] + out)
                else:
                    await send(out, _TEXT)
                observe(clock() - began)
        finally:
            beat.stop()

    async def _release(self, socket: Socket) -> None:
        conn, ws = socket.conn, socket.ws
        self.live.pop(conn.id, None)
        FIGURES.connections_open -= 1
        # Its place under the account's limit first: a bot at its limit reconnects at once.
        await self.stores.registry.remove(conn)
        usage = conn.usage()
        usage.closed_at = utcnow()
        # The peer echoes the server's close code or sends its own; the server's wins.
        usage.close_code = socket.close_code or ws.close_code
        usage.close_reason = socket.close_reason or _close_reason(ws.close_code)
        try:
            await self.stores.billing.record_usage(usage)
        except Exception as exc:
            log.error("billing.usage_failed", connection_id=conn.id, error=repr(exc))
        log.info(
            "connection.close",
            connection_id=conn.id,
            account_id=conn.account_id,
            close_code=usage.close_code,
            close_reason=usage.close_reason,
            predictions=conn.predictions,
            errors=conn.errors,
            seconds=round(time.time() - conn.opened_at.timestamp(), 3),
        )

    async def watch_revocations(self, interval: float) -> None:
        """Close, with 4401, live connections whose key was revoked anywhere."""
        while True:
            await asyncio.sleep(interval)
            if not self.live:
                continue
            try:
                revoked = await self.stores.key_store.revoked_among(
                    {s.conn.key_id for s in self.live.values()}
                )
            except Exception as exc:
                log.error("revocation.check_failed", error=repr(exc))
                continue
            for socket in [s for s in self.live.values() if s.conn.key_id in revoked]:
                if socket.close_code is None:
                    # In the background: a slow peer's close handshake must not delay others.
                    task = asyncio.create_task(
                        socket.close(protocol.KEY_REVOKED, "API key revoked")
                    )
                    self._closers.add(task)
                    task.add_done_callback(self._closers.discard)

    async def close_abandoned_forever(self, interval: float) -> None:
        """Close, now and every ``interval`` seconds, the usage rows that a process killed
        outright left open (its connections' ends were never recorded)."""
        while True:
            try:
                await self.close_abandoned()
            except Exception as exc:  # a store outage: try again next time
                log.error("usage.sweep_failed", error=repr(exc)[:200])
            await asyncio.sleep(interval)

    async def close_abandoned(self, older_than: float = ABANDONED_AFTER_SECONDS) -> int:
        """Close the open usage rows, opened over ``older_than`` seconds ago, of connections
        that no process holds: as lost (1006), counts unknown. A connection only between
        leaving the registry and recording its end is overwritten by its own record."""
        before = utcnow() - timedelta(seconds=older_than)
        closed, after = 0, None
        while rows := await self.stores.billing.unclosed_usage(before, SWEEP_PAGE, after):
            live = await self.stores.registry.live_among(row.connection_id for row in rows)
            for usage in rows:
                if usage.connection_id in live or usage.connection_id in self.live:
                    continue
                usage.closed_at = utcnow()
                usage.close_code, usage.close_reason = ABANDONED
                closed += await self.stores.billing.close_abandoned(usage)
            after = rows[-1].opened_at
        if closed:
            log.warning("usage.closed_abandoned", connections=closed)
        return closed

    async def drain(self) -> None:
        """Until every ended connection is recorded (before the stores close)."""
        while self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)

    async def shutdown(self) -> None:
        """Stop accepting and close every socket with 1001; handlers then record usage."""
        self.closing = True
        live = list(self.live.values())
        pending = self.sockets - {socket.ws for socket in live}  # not yet authenticated
        await asyncio.gather(
            *(socket.close(protocol.GOING_AWAY, "server shutdown") for socket in live),
            *(ws.close(code=protocol.GOING_AWAY, message=b"server shutdown") for ws in pending),
            return_exceptions=True,
        )


def _close_reason(code: int | None) -> str:
    if code == TOO_BIG:
        return "message too big"
    if code in (1000, 1001) or (code is not None and 3000 <= code < 5000):
        return "closed by client"
    return "connection lost"
