"""The asyncio client: one authenticated websocket, pipelined requests, reconnection."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import itertools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from . import answers
from .answers import Prediction
from .backoff import full_jitter
from .errors import (
    AuthenticationError,
    ConnectError,
    ConnectionClosedError,
    ConnectionLostError,
    NemberError,
    RequestTimeoutError,
    prediction_error,
    refusal,
)

try:  # websockets >= 13: the asyncio implementation
    from websockets.asyncio.client import connect as _ws_connect
except ImportError:  # websockets 12: the legacy one, which has the same calls used here
    from websockets.client import connect as _ws_connect  # type: ignore[no-redef]

log = logging.getLogger("nember_client")

VALID_KEY = {"status": "success", "message": "Valid API key."}
CLOSE_TIMEOUT = 5.0  # seconds to wait for the server's half of a close handshake
ABNORMAL = 1006  # what a connection that ended without a close frame is reported as

_TIMEOUTS = (asyncio.TimeoutError, TimeoutError)  # distinct classes before Python 3.11


def is_final(code: int) -> bool:
    """Whether a close code means "don't come back": a policy violation (1008) or one of the
    application's own codes (4000 closed by the owner, 4401 key revoked, ...). Any other
    (1001 going away, 1006 dropped, 1011, 1012 restart, 1013 try later, ...) is worth a
    reconnection."""
    return code == 1008 or 4000 <= code <= 4999


class _Waiting:
    """A request sent on a link, waiting for its answer."""

    __slots__ = ("future", "seq", "request_id")

    def __init__(self, future: asyncio.Future, seq: int, request_id: Any):
        self.future, self.seq, self.request_id = future, seq, request_id


class _Link:
    """One authenticated websocket and the requests waiting on it. Requests never move to
    another link: a seq_num and a request_id only mean something on their own connection."""

    __slots__ = ("ws", "pending", "by_seq", "sent", "reader", "failure")

    def __init__(self, ws: Any):
        self.ws = ws
        self.pending: dict[Any, _Waiting] = {}  # by request_id
        self.by_seq: dict[int, Any] = {}  # seq_num -> request_id, for answers without an id
        self.sent = 0  # request frames sent: the server's seq_num of the last one
        self.reader: asyncio.Task | None = None
        self.failure: NemberError | None = None  # why it ended, once it has

    def forget(self, waiting: _Waiting) -> None:
        if self.pending.get(waiting.request_id) is waiting:
            del self.pending[waiting.request_id]
        self.by_seq.pop(waiting.seq, None)


class AsyncClient:
    """A connection to Nember's ``/ws`` for asyncio code::

        async with AsyncClient("ws://127.0.0.1:8765/ws", "nmb_...") as client:
            answer = await client.predict("example_strategy", "DecisionTree", "class",
                                          [{"point1": 3, "point2": 2}, {"point1": 1, "point2": 3}])

    Any number of :meth:`predict` calls may be in flight at once on the one socket
    (``asyncio.gather``): each carries a ``request_id`` and its answer is matched by it.

    The first connection is not retried: a wrong URL or key should show at once. After
    that, with ``reconnect=True``, a dropped connection (or a server closing with 1001,
    1011, 1012, 1013, ...) is opened again in the background with exponential backoff and
    full jitter, capped at ``max_backoff`` seconds, and the key sent again; ``on_reconnect``
    is then called (with no arguments; it may be a coroutine function). Requests in flight
    when a connection drops fail with :class:`ConnectionLostError`; they are never resent.
    A close by the account owner (4000), a revoked key (4401), a policy violation (1008)
    or a refused key on reconnection end the client: every call then raises that error.

    ``open_timeout`` bounds opening the websocket and hearing the key's answer;
    ``request_timeout`` bounds one :meth:`predict`, including waiting for a reconnection.
    ``ssl`` is passed to the websocket for ``wss://`` URLs (an ``ssl.SSLContext``).
    """

    def __init__(self, url: str, api_key: str, *, reconnect: bool = True,
                 max_backoff: float = 30.0, open_timeout: float = 10.0,
                 request_timeout: float = 10.0, ssl: Any = None,
                 on_reconnect: Callable[[], Any] | None = None):
        if not isinstance(api_key, str) or not api_key.strip():
            raise ValueError("api_key must be a non-empty string")
        for name, value in (("max_backoff", max_backoff), ("open_timeout", open_timeout),
                            ("request_timeout", request_timeout)):
            if not value > 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        self.url = url
        self._api_key = api_key.strip()
        self._auto_reconnect = reconnect
        self._max_backoff = float(max_backoff)
        self._open_timeout = float(open_timeout)
        self._request_timeout = float(request_timeout)
        self._ssl = ssl
        self.on_reconnect = on_reconnect
        self._link: _Link | None = None
        self._final: NemberError | None = None  # set once the client can't be used again
        self._closing = False
        self._started = False
        self._up = asyncio.Event()  # set while a link is up, and once the client is final
        self._reconnecting: asyncio.Task | None = None
        self._connecting = asyncio.Lock()
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed" if self._final else "not connected"
        return f"<AsyncClient {self.url} {state}>"

    @property
    def connected(self) -> bool:
        """Whether an authenticated connection is up right now."""
        return self._link is not None and not self._closing

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection and authenticate; a no-op once connected.

        Raises :class:`ConnectError`, :class:`AuthenticationError`,
        :class:`ConnectionLimitError` or :class:`ServiceUnavailableError`. After an
        :class:`AuthenticationError` the client is final (a refused key stays refused);
        after the others, ``connect()`` may be tried again.
        """
        async with self._connecting:
            if self._final is not None:
                raise _again(self._final)
            if self._link is not None or self._is_reconnecting():
                return
            try:
                link = await self._open()
            except AuthenticationError as exc:  # a refused key stays refused: never again
                self._end(exc)
                raise
            if self._closing:  # closed while it opened
                await _abort(link.ws)
                raise _again(self._final or ConnectionClosedError(1000, "closed by the client"))
            self._started = True
            self._install(link)

    async def close(self) -> None:
        """Close the connection (code 1000) and stop reconnecting. Requests still waiting
        fail with :class:`ConnectionClosedError`; so do later calls. Safe to call twice."""
        if self._closing:
            return
        self._closing = True
        if self._final is None:
            self._final = ConnectionClosedError(1000, "closed by the client")
        self._up.set()  # wakes requests waiting for a reconnection: they fail
        if self._is_reconnecting():
            self._reconnecting.cancel()
            await asyncio.gather(self._reconnecting, return_exceptions=True)
        link = self._link
        if link is not None:
            try:
                await link.ws.close()
            finally:
                if link.reader is not None:
                    await asyncio.gather(link.reader, return_exceptions=True)

    async def predict(self, strat: str, model: str, model_type: str,
                      points: Sequence[Mapping[str, float]], *, probabilities: bool = False,
                      model_version: int | None = None, details: bool = False,
                      request_id: str | int | None = None) -> Prediction:
        """Ask the model (``strat``, ``model``, ``model_type``) to predict from ``points``
        (the model's window of data points, oldest first, each {feature: number}).

        ``probabilities``: the class probabilities too (class models only).
        ``model_version``: answer from that version (pinned) rather than the newest.
        ``details``: which version answered, when it was trained, and whether the points
        lie within what it saw in training.
        ``request_id``: a str or int unique among this client's requests in flight;
        one is generated when not given.

        Raises :class:`PredictionError` (or a subclass) when the server answers with an
        error; :class:`ConnectionLostError`, :class:`ConnectionClosedError` or
        :class:`RequestTimeoutError` when no answer comes.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._request_timeout
        request: dict[str, Any] = {
            "strat_name": strat,
            "model_name": model,
            "model_type": model_type,
            "DataPoints": _points(points),
        }
        # Only what was asked for goes out: a plain request gets the original answer shape.
        if probabilities:
            request["probabilities"] = True
        if model_version is not None:
            request["model_version"] = model_version
        if details:
            request["details"] = True
        link = await self._current_link(deadline)
        # From here to the send nothing awaits: the frames leave in the order their seq_num
        # was counted, which is the order the server counts them in.
        request["request_id"] = rid = self._request_id(link, request_id)
        frame = _dumps(request)
        link.sent += 1
        waiting = _Waiting(loop.create_future(), link.sent, rid)
        link.pending[rid] = waiting
        link.by_seq[waiting.seq] = rid
        try:
            try:
                await link.ws.send(frame)
            except ConnectionClosed:
                pass  # the reader fails the request, saying why the connection ended
            if link.failure is not None and not waiting.future.done():
                waiting.future.set_exception(_again(link.failure))
            try:
                return await asyncio.wait_for(waiting.future, max(deadline - loop.time(), 0))
            except _TIMEOUTS:
                raise RequestTimeoutError(
                    f"no answer to request {rid!r} within {self._request_timeout:g} s"
                ) from None
        finally:
            link.forget(waiting)

    # --- connecting -------------------------------------------------------------------

    async def _open(self) -> _Link:
        """A new websocket, authenticated; raises what the first connection raises."""
        options: dict[str, Any] = {"open_timeout": self._open_timeout, "compression": None,
                                   "close_timeout": min(self._open_timeout, CLOSE_TIMEOUT)}
        if self._ssl is not None:
            options["ssl"] = self._ssl
        try:
            ws = await _ws_connect(self.url, **options)
        except (OSError, InvalidHandshake, InvalidURI, *_TIMEOUTS) as exc:
            raise ConnectError(self.url, _describe(exc)) from exc
        try:
            await ws.send(self._api_key)
            raw = await asyncio.wait_for(ws.recv(), self._open_timeout)
        except ConnectionClosed as exc:
            code, reason = _close_of(exc)
            raise ConnectError(self.url, "the server closed the connection before answering "
                                         f"the API key ({_said(code, reason)})") from None
        except _TIMEOUTS:
            await _abort(ws)
            raise ConnectError(self.url, "no answer to the API key within "
                                         f"{self._open_timeout:g} s") from None
        except BaseException:
            await _abort(ws)
            raise
        answer = _loads(raw)
        if answer == VALID_KEY:
            return _Link(ws)
        await _abort(ws)  # the server closes it too (1008), after a refusal
        if (isinstance(answer, dict) and answer.get("status") == "error"
                and isinstance(answer.get("message"), str)):
            raise refusal(answer["message"])
        raise ConnectError(self.url, f"unexpected answer to the API key: {str(raw)[:200]}")

    def _is_reconnecting(self) -> bool:
        return self._reconnecting is not None and not self._reconnecting.done()

    def _install(self, link: _Link) -> None:
        self._link = link
        link.reader = asyncio.get_running_loop().create_task(
            self._read(link), name="nember-client-reader")
        self._up.set()

    async def _current_link(self, deadline: float) -> _Link:
        """The link to send on, waiting for a reconnection until ``deadline`` if need be."""
        loop = asyncio.get_running_loop()
        while True:
            if self._final is not None:
                raise _again(self._final)
            if self._link is not None:
                return self._link
            if not self._started:
                raise NemberError("not connected: use `async with AsyncClient(...)` or "
                                  "await connect() first")
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                await asyncio.wait_for(self._up.wait(), remaining)
            except _TIMEOUTS:
                raise ConnectionLostError(
                    f"not connected to {self.url}: still reconnecting after "
                    f"{self._request_timeout:g} s") from None

    async def _reconnect(self) -> None:
        """Open a new link, with backoff, until one is up or the client is final."""
        attempt = 0
        while True:
            delay = full_jitter(attempt, self._max_backoff)
            attempt += 1
            await asyncio.sleep(delay)
            try:
                link = await self._open()
            except AuthenticationError as exc:  # a refused key stays refused
                log.warning("nember: reconnection refused: %s", exc)
                self._end(exc)
                return
            except NemberError as exc:  # down, restarting, overloaded: try again later
                log.info("nember: reconnection attempt %d failed: %s", attempt, exc)
                continue
            if self._closing:
                await _abort(link.ws)
                return
            self._install(link)
            log.info("nember: reconnected to %s after %d attempt(s)", self.url, attempt)
            await self._call_on_reconnect()
            return

    async def _call_on_reconnect(self) -> None:
        if self.on_reconnect is None:
            return
        try:
            outcome = self.on_reconnect()
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:  # the caller's bug must not take the connection down
            log.exception("nember: on_reconnect failed")

    def _end(self, error: NemberError) -> None:
        """Make the client final: every waiting and later call raises ``error``."""
        if self._final is None:
            self._final = error
        self._up.set()

    # --- answers ----------------------------------------------------------------------

    async def _read(self, link: _Link) -> None:
        """Hand each answer frame to its request, until the connection ends."""
        ws = link.ws
        try:
            while True:
                self._dispatch(link, await ws.recv())
        except ConnectionClosed as exc:
            code, reason = _close_of(exc)
        except Exception as exc:  # a broken transport, reported as the drop it is
            log.warning("nember: connection failed: %r", exc)
            code, reason = ABNORMAL, repr(exc)
        self._dropped(link, code, reason)

    def _dispatch(self, link: _Link, raw: str | bytes) -> None:
        answer = _loads(raw)
        if not isinstance(answer, dict):
            log.warning("nember: ignored a frame that is not an answer: %.200r", raw)
            return
        seq_num = answer.get("seq_num")
        rid = answer.get("request_id", _NO_ID)
        if rid is _NO_ID or not _hashable(rid):  # a server that doesn't echo: go by order
            rid = link.by_seq.get(seq_num, _NO_ID) if isinstance(seq_num, int) else _NO_ID
        waiting = link.pending.get(rid)
        # The seq_num must agree too: an id given again after its first request timed out
        # must not take that request's late answer.
        if waiting is None or (isinstance(seq_num, int) and seq_num != waiting.seq):
            log.debug("nember: ignored an answer to no waiting request: %.200r", raw)
            return
        link.forget(waiting)
        if waiting.future.done():  # timed out or cancelled meanwhile
            return
        kind = answer.get("type")
        if kind == "success":
            try:
                waiting.future.set_result(answers.prediction(answer, waiting.request_id))
            except (KeyError, TypeError, ValueError) as exc:
                waiting.future.set_exception(NemberError(f"malformed answer {raw!r}: {exc}"))
        elif kind == "error":
            waiting.future.set_exception(prediction_error(
                str(answer.get("message")), seq_num, waiting.request_id))
        else:
            waiting.future.set_exception(NemberError(f"unexpected answer: {raw!r}"))

    def _dropped(self, link: _Link, code: int, reason: str) -> None:
        """The link ended: fail what waits on it, then reconnect or end the client."""
        if self._link is link:
            self._link = None
            if self._final is None:
                self._up.clear()
        if self._closing:
            failure: NemberError = self._final or ConnectionClosedError(code, reason)
        elif is_final(code) or not self._auto_reconnect:
            # Requests in flight at a plain drop say so; the client itself is over either way.
            final = ConnectionClosedError(code, reason)
            failure = final if is_final(code) else _lost(self.url, code, reason)
            log.warning("nember: connection to %s closed for good (%s)", self.url,
                        _said(code, reason))
            self._end(final)
        else:
            failure = _lost(self.url, code, reason)
            log.info("nember: connection to %s lost (%s); reconnecting", self.url,
                     _said(code, reason))
            self._reconnecting = asyncio.get_running_loop().create_task(
                self._reconnect(), name="nember-client-reconnect")
        link.failure = failure
        for waiting in list(link.pending.values()):
            if not waiting.future.done():
                waiting.future.set_exception(_again(failure))
        link.pending.clear()
        link.by_seq.clear()

    def _request_id(self, link: _Link, given: Any) -> Any:
        if given is None:
            while True:  # skip ids the caller chose for requests still in flight
                rid = next(self._ids)
                if rid not in link.pending:
                    return rid
        if isinstance(given, bool) or not isinstance(given, (str, int)):
            raise TypeError(f"request_id must be a str or an int, got {type(given).__name__}")
        if given in link.pending:
            raise ValueError(f"request_id {given!r} is already in flight on this connection")
        return given


_NO_ID = object()


def _again(error: NemberError) -> NemberError:
    """A fresh copy of an error raised more than once: one instance raised again and again
    would gather every raise's traceback (and keep its frames alive)."""
    return copy.copy(error)


def _said(code: int, reason: str) -> str:
    return f"{code}: {reason}" if reason else str(code)


def _lost(url: str, code: int, reason: str) -> ConnectionLostError:
    return ConnectionLostError(f"the connection to {url} was lost ({_said(code, reason)}) "
                               "before the answer came; the request was not resent",
                               code, reason)


def _close_of(exc: ConnectionClosed) -> tuple[int, str]:
    """The close code and reason the server sent; 1006 when it sent none (a dropped link)."""
    received = exc.rcvd
    if received is None:
        return ABNORMAL, ""
    return int(received.code), received.reason


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _TIMEOUTS):
        return "timed out while opening the websocket"
    return str(exc) or type(exc).__name__


def _hashable(value: Any) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool)


async def _abort(ws: Any) -> None:
    """Close a websocket we give up on, without letting its failure hide ours."""
    with contextlib.suppress(Exception):  # nothing more to do with a broken socket
        await ws.close()


def _points(points: Sequence[Mapping[str, float]]) -> list[dict[str, float]]:
    if isinstance(points, (str, bytes, Mapping)):
        raise TypeError("points must be a sequence of data points ({feature: number} each), "
                        "oldest first")
    return [dict(point) for point in points]


def _plain(value: Any) -> Any:
    """numpy and pandas scalars (np.int64, np.float32, ...) as the Python numbers they hold."""
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"{type(value).__name__} is not a JSON number")


def _dumps(request: dict[str, Any]) -> str:
    try:
        return json.dumps(request, separators=(",", ":"), allow_nan=False, default=_plain)
    except ValueError as exc:
        raise ValueError("the data points must hold finite numbers (NaN and Infinity are not "
                         "JSON)") from exc


def _loads(raw: str | bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
