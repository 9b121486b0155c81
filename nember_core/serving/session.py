"""One authenticated connection's request handling: frame in, answer frame out.

This is the hot path. It does no I/O, calls no hook and takes no lock: the model comes from
the in-memory cache, and the only case that needs to wait (a model not yet loaded, or one
whose failed load is due for another try) is handed back to the caller as the key to load.
"""

from __future__ import annotations

import time
from typing import Any, Literal, final, overload

import structlog

from nember_core.metrics import FIGURES
from nember_core.records import ModelKey

from . import protocol
from .model_cache import MISSING, ModelCache, PinnedMiss
from .protocol import Extensions, RequestError

log = structlog.get_logger("nember.ws")


class RateLimiter:
    """A token bucket: ``rate`` frames per second on average, bursts up to ``burst``."""

    __slots__ = ("rate", "burst", "tokens", "stamp", "clock")

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.clock = clock
        self.stamp = clock()

    def allow(self) -> bool:
        now = self.clock()
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


# The waiting kinds below (and ModelKey) are final: they are told apart with ``type(x) is C``,
# which the type checker narrows in both branches only for classes that can't be subclassed.
@final
class Pending:
    """A request whose prediction comes with a batch; the rest of its answer is ready."""

    __slots__ = ("key", "model", "future", "seq", "new", "request_id")

    def __init__(self, key: ModelKey, model, future, seq: int, new: bool, request_id: Any):
        self.key, self.model, self.future = key, model, future
        self.seq, self.new, self.request_id = seq, new, request_id


@final
class VersionToLoad:
    """A request for a version by number that must be loaded first."""

    __slots__ = ("key", "version")

    def __init__(self, key: ModelKey, version: int):
        self.key, self.version = key, version


@final
class LastModel:
    """The model this connection's last answer came from, and the request fields that named
    it: a bot asks the same model frame after frame, and such a frame skips the checks, the
    ``ModelKey`` and the cache lookup (``PredictionSession._answer``)."""

    __slots__ = ("strat", "family", "model_type", "key", "model", "changes")

    def __init__(self, key: ModelKey, model, changes: int):
        self.strat, self.family, self.model_type = key.strat, key.family, key.model_type
        self.key, self.model, self.changes = key, model, changes


class PredictionSession:
    __slots__ = ("conn", "api_key", "cache", "limiter", "seq", "seen", "rate_message", "last")

    def __init__(self, conn, api_key: str, cache: ModelCache, limiter: RateLimiter):
        self.conn = conn  # the LiveConnection whose counters this session keeps
        self.api_key = api_key
        self.cache = cache
        self.limiter = limiter
        self.seq = 0
        self.seen: dict[ModelKey, int] = {}  # model version last used, per model, on this socket
        self.last: LastModel | None = None
        self.rate_message = (
            f"Rate limit exceeded: at most {limiter.rate:g} requests per second "
            f"(bursts of {limiter.burst:g}) on one connection; slow down."
        )

    def answer(self, data: str | bytes,
               is_text: bool) -> bytes | ModelKey | VersionToLoad | Pending:
        """Answer the next request frame; or return what to wait for first (the ModelKey or
        version to load, or a prediction in a batch): then ``complete`` gives the answer."""
        self.seq += 1
        self.conn.last_request_at = time.time()
        if not self.limiter.allow():
            request_id = protocol.request_id_of(data) if is_text else protocol.NO_ID
            return self._error(self.rate_message, request_id)
        if not is_text:
            return self._error(
                "Binary frames are not accepted; send each request as a JSON text frame.",
                protocol.NO_ID,
            )
        return self._answer(data, may_load=True)

    async def complete(self, waiting: ModelKey | VersionToLoad | Pending,
                       data: str | bytes) -> bytes:
        """The answer to a frame that ``answer`` could not finish at once."""
        if type(waiting) is ModelKey or type(waiting) is VersionToLoad:
            if type(waiting) is ModelKey:
                await self.cache.load(waiting)
            else:
                await self.cache.load_version(waiting.key, waiting.version)
            answered = self._answer(data, may_load=False)  # once: the lookup is now cached
            if type(answered) is not Pending:
                return answered
            waiting = answered
        try:
            raw = await waiting.future
            prediction = waiting.model.label(raw)
        except Exception as exc:
            log.error("predict.failed", connection_id=self.conn.id, error=repr(exc))
            if waiting.new:  # nothing was predicted: the next success is still the first
                self.seen.pop(waiting.key, None)
            return self._error("The model could not make a prediction for this input.",
                               waiting.request_id, waiting.seq)
        self.conn.predictions += 1
        FIGURES.count_prediction(*waiting.model.kind)
        return protocol.success(waiting.seq, waiting.new, prediction, waiting.request_id)

    @overload
    def _answer(self, data: str | bytes, may_load: Literal[False]) -> bytes | Pending: ...

    @overload
    def _answer(self, data: str | bytes,
                may_load: bool) -> bytes | ModelKey | VersionToLoad | Pending: ...

    def _answer(self, data: str | bytes,
                may_load: bool) -> bytes | ModelKey | VersionToLoad | Pending:
        """The answer, or what to wait for first. Without ``may_load`` nothing is handed back
        to load (``_extended`` and ``_unavailable`` answer an error instead): bytes or a
        ``Pending``, as the first overload says."""
        request_id: Any = protocol.NO_ID
        try:
            request = protocol.parse(data)
            last = self.last
            # The common frame: the four original fields, naming the model of the previous
            # answer, which the cache still serves. Equal names were checked then; a
            # ``DataPoints`` that isn't a list goes the long way for its error.
            if (last is not None and len(request) == 4 and last.changes == self.cache.changes
                    and request.get("strat_name") == last.strat
                    and request.get("model_name") == last.family
                    and request.get("model_type") == last.model_type
                    and type(points := request.get("DataPoints")) is list):
                model = last.model
                if model.batcher is not None and not model.batcher.direct():
                    row = model.extractor.row(points)
                    return Pending(last.key, model, model.batcher.submit(row), self.seq, False,
                                   request_id)
                prediction = model.predict(points)
                self.conn.predictions += 1
                counts = FIGURES.predictions
                counts[model.kind] = counts.get(model.kind, 0) + 1
                return protocol.existing(self.seq, prediction)
            request_id = protocol.request_id(request)
            strat, family, model_type = protocol.model_selector(request, self.api_key)
            key = ModelKey(self.conn.account_id, strat, family, model_type)
            # Four fields are the original request: only a longer one may opt in to more.
            if len(request) > 4:
                extra = protocol.extensions(request)
                if extra is not None:
                    return self._extended(key, request, extra, request_id, may_load)
            model = self.cache.get(key)
            if model is MISSING or model is None:
                return self._unavailable(key, model, request_id, may_load)
            if model.batcher is not None and not model.batcher.direct():
                # A costly model asked by many at once: predicted with this turn's batch.
                row = model.extractor.row(request["DataPoints"])
                return Pending(key, model, model.batcher.submit(row), self.seq,
                               self._is_new(key, model), request_id)
            prediction = model.predict(request["DataPoints"])
        except RequestError as exc:
            return self._error(str(exc), request_id)
        except Exception as exc:  # a library failure on odd input: answer, never crash
            log.error("predict.failed", connection_id=self.conn.id, error=repr(exc))
            return self._error("The model could not make a prediction for this input.", request_id)
        self.conn.predictions += 1
        counts = FIGURES.predictions
        counts[model.kind] = counts.get(model.kind, 0) + 1
        new = self._is_new(key, model)
        self.last = LastModel(key, model, self.cache.changes)
        return protocol.success(self.seq, new, prediction, request_id)

    def _extended(self, key: ModelKey, request: dict, extra: Extensions, request_id: Any,
                  may_load: bool) -> bytes | ModelKey | VersionToLoad:
        """A request that opted in to PROTOCOL §7's fields: answered one by one, never in a
        batch (inside ``_answer``'s error handling)."""
        if extra.probabilities and key.model_type == "reg":
            return self._error(protocol.PROBABILITIES_FOR_CLASS, request_id)
        if extra.version is None:
            model = self.cache.get(key)
            if model is MISSING or model is None:
                return self._unavailable(key, model, request_id, may_load)
        else:
            model = self.cache.get_version(key, extra.version)
            if model is MISSING:
                if may_load:
                    return VersionToLoad(key, extra.version)
                return self._error(protocol.LOAD_FAILED, request_id)
            if type(model) is PinnedMiss:
                return self._error(self._pinned_miss(model, extra.version), request_id)
        if extra.probabilities and model.proba is None:
            return self._error(protocol.NO_PROBABILITIES, request_id)
        row = model.extractor.row(request["DataPoints"])
        probabilities = None
        if extra.probabilities:
            prediction, probabilities = model.probabilities(row)
        else:
            prediction = model.label(model.predictor(row))
        details = model.details(row) if extra.details else None
        self.conn.predictions += 1
        counts = FIGURES.predictions
        counts[model.kind] = counts.get(model.kind, 0) + 1
        return protocol.success_extended(self.seq, self._is_new(key, model), prediction,
                                         request_id, probabilities, details)

    def _unavailable(self, key: ModelKey, model: Any, request_id: Any,
                     may_load: bool) -> bytes | ModelKey:
        """For a model the cache can't serve now (``MISSING``: never looked up; ``None``:
        none, or its load failed), off the hot path: the key to load, or the error."""
        if model is MISSING and may_load:
            return key
        failure = self.cache.failure(key)
        if failure is None:
            return self._error(protocol.NOT_FOUND, request_id)
        if may_load and failure.due():
            return key  # time to try loading it again
        return self._error(protocol.LOAD_FAILED, request_id)

    @staticmethod
    def _pinned_miss(miss: PinnedMiss, version: int) -> str:
        if miss.reason == "no_version":
            # ``newest`` is known whenever the reason is "no_version" (the cache sets both).
            return protocol.no_such_version(version, miss.newest)  # type: ignore[arg-type]
        return protocol.NOT_FOUND if miss.reason == "no_model" else protocol.LOAD_FAILED

    def _is_new(self, key: ModelKey, model) -> bool:
        """The first use of this model version on this connection?"""
        if self.seen.get(key) == model.version:
            return False
        self.seen[key] = model.version
        return True

    def _error(self, message: str, request_id: Any, seq: int | None = None) -> bytes:
        seq = self.seq if seq is None else seq
        self.conn.errors += 1
        FIGURES.request_errors += 1
        log.info("request.error", connection_id=self.conn.id, seq_num=seq, error=message)
        return protocol.error(seq, message, request_id)
