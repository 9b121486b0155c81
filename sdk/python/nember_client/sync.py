"""A blocking client for scripts that are not asyncio: the async client, run on a private
event loop in a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from .answers import Prediction
from .client import AsyncClient
from .errors import ConnectionClosedError

T = TypeVar("T")


class Client:
    """The :class:`AsyncClient`'s API, blocking::

        with Client("ws://127.0.0.1:8765/ws", "nmb_...") as client:
            answer = client.predict("example_strategy", "DecisionTree", "class", points)

    Every call runs on one event loop in a daemon thread of its own, so calls from several
    threads share the one connection and are pipelined on it, as ``asyncio.gather`` does
    with the async client. ``on_reconnect`` runs on that thread: it must not call this
    client's blocking methods (they would wait for the thread they block).
    """

    def __init__(self, url: str, api_key: str, *, reconnect: bool = True,
                 max_backoff: float = 30.0, open_timeout: float = 10.0,
                 request_timeout: float = 10.0, ssl: Any = None,
                 on_reconnect: Callable[[], Any] | None = None):
        # Built here so that a bad argument raises before a thread exists.
        self._client = AsyncClient(url, api_key, reconnect=reconnect, max_backoff=max_backoff,
                                   open_timeout=open_timeout, request_timeout=request_timeout,
                                   ssl=ssl, on_reconnect=on_reconnect)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nember-client",
                                        daemon=True)  # never keeps a finished script alive
        self._thread.start()
        self._stopped = False
        self._stopping = threading.Lock()

    def __repr__(self) -> str:
        return repr(self._client).replace("AsyncClient", "Client", 1)

    @property
    def url(self) -> str:
        return self._client.url

    @property
    def connected(self) -> bool:
        """Whether an authenticated connection is up right now."""
        return self._client.connected

    def __enter__(self) -> Client:
        try:
            self.connect()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def connect(self) -> None:
        """Open the connection and authenticate (see :meth:`AsyncClient.connect`)."""
        self._run(self._client.connect())

    def predict(self, strat: str, model: str, model_type: str,
                points: Sequence[Mapping[str, float]], *, probabilities: bool = False,
                model_version: int | None = None, details: bool = False,
                request_id: str | int | None = None) -> Prediction:
        """See :meth:`AsyncClient.predict`; blocks until the answer (or the error)."""
        return self._run(self._client.predict(
            strat, model, model_type, points, probabilities=probabilities,
            model_version=model_version, details=details, request_id=request_id))

    def close(self) -> None:
        """Close the connection, then stop the background thread. Safe to call twice."""
        with self._stopping:
            if self._stopped:
                return
            self._stopped = True
        try:
            asyncio.run_coroutine_threadsafe(self._shut_down(), self._loop).result()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    async def _shut_down(self) -> None:
        await self._client.close()
        # Whatever else still runs on the loop (a slow on_reconnect) ends with it.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("a blocking Client method was called on the client's own thread "
                               "(from on_reconnect?); it would wait forever")
        with self._stopping:  # never handed to a loop that is stopping: it would never end
            if self._stopped:
                coroutine.close()
                raise ConnectionClosedError(1000, "closed by the client")
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result()
