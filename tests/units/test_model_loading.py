"""Model loading: off the event loop, failures that are not "not found", one look-up per
refresh, bounded memory for misses. In-process, on the real local-disk store and families."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import orjson
import pytest
from nember_local_disk import LocalDiskModelStore
from structlog.testing import capture_logs

from nember_core.plugins import collect_families, plugin_manager
from nember_core.records import LiveConnection, ModelKey, ModelMeta, utcnow
from nember_core.serving import model_cache
from nember_core.serving.model_cache import MISSING, ModelCache
from nember_core.serving.session import PredictionSession, RateLimiter

FAMILIES = collect_families(plugin_manager())
ACCOUNT = "acc_test"
POINTS = [{"point1": 3, "point2": 2}, {"point1": 1, "point2": 3}]
LOAD_FAILED = "The model could not be loaded; try again later."
NOT_FOUND = "Model configuration not found in the backend."


class Family:
    """A real family, wrapped: counts loads, can fail them, slow down or count predictors."""

    def __init__(self, name: str, predictor_seconds: float = 0.0):
        self.family = FAMILIES[name]
        self.name, self.library_version = name, self.family.library_version
        self.predictor_seconds = predictor_seconds
        self.fail: Exception | None = None  # raised by ``loads`` while set
        self.loads_calls = 0
        self.building = 0  # predictors being built right now...
        self.most_building = 0  # ...and the most at once
        self._lock = threading.Lock()

    def loads(self, data, model_type):
        self.loads_calls += 1
        if self.fail is not None:
            raise self.fail
        return self.family.loads(data, model_type)

    def predictor(self, model, model_type):
        with self._lock:
            self.building += 1
            self.most_building = max(self.most_building, self.building)
        try:
            time.sleep(self.predictor_seconds)  # as a large forest's arrays take to build
            return self.family.predictor(model, model_type)
        finally:
            with self._lock:
                self.building -= 1

    def __getattr__(self, name):
        return getattr(self.family, name)


class Store:
    """The local-disk store, counting look-ups; ``broken`` strategies fail to read,
    ``unreadable`` ones fail every look-up (as a name a store refuses), and ``down`` fails
    every look-up."""

    def __init__(self, root):
        self.store = LocalDiskModelStore(root)
        self.latest_calls: list[ModelKey] = []
        self.batches: list[list[ModelKey]] = []
        self.broken: set[str] = set()
        self.unreadable: set[str] = set()
        self.down = False

    async def latest(self, key):
        self.latest_calls.append(key)
        if self.down or key.strat in self.unreadable:
            raise OSError(f"the store can't look up {key.strat[:20]}")
        return await self.store.latest(key)

    async def latest_versions(self, keys):
        self.batches.append(list(keys))
        if any(key.strat in self.unreadable for key in keys):
            raise OSError("File name too long")
        return await self.store.latest_versions(keys)

    async def read(self, meta):
        if meta.key.strat in self.broken:
            raise OSError("Input/output error")
        return await self.store.read(meta)

    def __getattr__(self, name):
        return getattr(self.store, name)


def key(strat: str, family: str = "DecisionTree", model_type: str = "class") -> ModelKey:
    return ModelKey(ACCOUNT, strat, family, model_type)


async def train(store: Store, model_key: ModelKey, seed: int = 0) -> ModelMeta:
    """Fit the key's real family on random data (2 features, window 2) and store it."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, 4))
    classes = None
    y = X[:, 0] + X[:, 3]
    if model_key.model_type == "class":
        y, classes = (y > 0).astype(np.int64), (0, 1)
    family = FAMILIES[model_key.family]
    model = family.fit(X, y, model_key.model_type, {})
    meta = ModelMeta(key=model_key, version=0, features=("point1", "point2"), window=2,
                     target="direction", classes=classes,
                     family_version=family.library_version, params={}, metrics={},
                     samples=len(y), trained_at=utcnow(), training_seconds=0.0)
    return await store.save(meta, family.dumps(model))


def session_for(cache: ModelCache) -> PredictionSession:
    conn = LiveConnection(id="conn_test", account_id=ACCOUNT, key_id="key_test",
                          key_name="test", remote="127.0.0.1", node="test",
                          opened_at=utcnow())
    return PredictionSession(conn, "nmb_test", cache, RateLimiter(1e9, 10**9))


async def ask(session: PredictionSession, strat: str = "s", **changes) -> dict:
    """One request through the session, as the gateway's receive loop makes it."""
    frame = orjson.dumps({"strat_name": strat, "model_name": "DecisionTree",
                          "model_type": "class", "DataPoints": POINTS, **changes})
    out = session.answer(frame, True)
    if type(out) is not bytes:
        out = await session.complete(out, frame)
    return orjson.loads(out)


async def test_building_a_slow_predictor_never_stalls_the_event_loop(tmp_path):
    store = Store(tmp_path)
    await train(store, key("s"))
    family = Family("DecisionTree", predictor_seconds=0.5)
    cache = ModelCache(store, {"DecisionTree": family})
    gaps = []

    async def tick():
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    started = time.perf_counter()
    await cache.load(key("s"))
    took = time.perf_counter() - started
    await asyncio.sleep(0.02)
    ticker.cancel()
    assert took >= 0.5  # the slow build happened during the load...
    assert max(gaps) < 0.1, f"the event loop stalled for {max(gaps):.3f} s"  # ...elsewhere
    assert len(gaps) > 40
    answer = await ask(session_for(cache))
    assert answer["type"] == "success" and answer["prediction"] in (0, 1)


async def test_a_failed_load_answers_could_not_be_loaded_then_recovers(tmp_path):
    store = Store(tmp_path)
    await train(store, key("s"))
    family = Family("DecisionTree")
    family.fail = ValueError("corrupt model file")
    cache = ModelCache(store, {"DecisionTree": family}, retry_base=0.2)
    session = session_for(cache)

    assert await ask(session) == {"type": "error", "seq_num": 1, "message": LOAD_FAILED}
    assert cache.failure(key("s")).delay == pytest.approx(0.2)
    # Before the retry time: answered at once, without trying again.
    assert await ask(session) == {"type": "error", "seq_num": 2, "message": LOAD_FAILED}
    assert family.loads_calls == 1
    # A model that doesn't exist is still "not found", not a failure.
    assert (await ask(session, strat="other"))["message"] == NOT_FOUND
    assert cache.failure(key("other")) is None

    await asyncio.sleep(0.25)  # due: the next request tries again, fails again, waits longer
    assert (await ask(session))["message"] == LOAD_FAILED
    assert family.loads_calls == 2
    assert cache.failure(key("s")).delay == pytest.approx(0.4)

    family.fail = None  # fixed, but the backoff hasn't passed yet
    assert (await ask(session))["message"] == LOAD_FAILED
    assert family.loads_calls == 2
    await asyncio.sleep(0.45)
    answer = await ask(session)
    assert answer == {"type": "success", "seq_num": 6,
                      "message": "New model configuration added, prediction made",
                      "prediction": answer["prediction"]}
    assert cache.failure(key("s")) is None and cache.get(key("s")).version == 1
    assert session.conn.predictions == 1 and session.conn.errors == 5


async def test_a_store_failure_is_retried_by_the_refresh_loop_and_logged_cut(tmp_path):
    store = Store(tmp_path)
    long_strat = "s" * 60_000  # the local disk can't hold such a name: only the failure counts
    await train(store, key("s"))
    cache = ModelCache(store, {"DecisionTree": Family("DecisionTree")}, retry_base=0.05)
    store.down = True
    with capture_logs() as logs:
        await cache.load(key("s"))
        await cache.load(key(long_strat))
    assert cache.get(key("s")) is None and cache.failure(key("s")).version is None
    failed = [event for event in logs if event["event"] == "model.load_failed"]
    assert len(failed) == 2
    for event in failed:
        assert len(event["strat"]) < 300 and len(event["error"]) < 300

    store.down = False
    await asyncio.sleep(0.06)
    await cache.refresh()  # no request needed: the refresh loop retries what is due
    assert cache.get(key("s")).version == 1 and cache.failure(key("s")) is None
    # A broken file, with a known version, fails as well: not "not found".
    store.broken.add("t")
    await train(store, key("t"))
    await cache.load(key("t"))
    assert cache.get(key("t")) is None and cache.failure(key("t")).version == 1


async def test_refresh_looks_all_keys_up_in_one_call_and_reloads_only_changes(tmp_path):
    store = Store(tmp_path)
    loaded = {strat: await train(store, key(strat, *kind))
              for strat, kind in [("a", ("DecisionTree", "class")),
                                  ("b", ("Linear", "reg")),
                                  ("c", ("DecisionTree", "reg"))]}
    store.broken.add("f")
    await train(store, key("f"))
    families = {name: Family(name) for name in ("DecisionTree", "Linear")}
    cache = ModelCache(store, families, retry_base=60.0)
    misses = [key(f"miss{i}") for i in range(10)]
    cached = [meta.key for meta in loaded.values()] + misses + [key("f")]
    for each in cached:
        await cache.load(each)
    # Two keys the store can't even look up: a miss of an unknown family, and a failure.
    # They stay out of the one look-up, or it would fail for every model.
    store.unreadable.update({"x", "y"})
    unknown_family = ModelKey(ACCOUNT, "x", "NoSuchFamily", "class")
    await cache.load(unknown_family)
    await cache.load(key("y"))
    assert cache.get(unknown_family) is None and cache.failure(key("y")) is not None
    await cache.refresh()  # the first look: nothing changed since the loads
    assert cache.failure(key("f")) is not None and cache.get(key("miss0")) is None
    b = cache.get(key("b", "Linear", "reg"))

    await train(store, key("a"), seed=1)  # retrained
    await store.delete(loaded["c"])  # deleted
    await train(store, key("miss0"))  # appeared
    store.latest_calls.clear()
    store.batches.clear()
    await cache.refresh()

    assert len(store.batches) == 1 and set(store.batches[0]) == set(cached)
    # Only the two that have a new version to read were looked up one by one.
    assert sorted(k.strat for k in store.latest_calls) == ["a", "miss0"]
    assert cache.get(key("a")).version == 2
    assert cache.get(key("miss0")).version == 1
    assert cache.get(key("c", "DecisionTree", "reg")) is None
    assert cache.failure(key("c", "DecisionTree", "reg")) is None  # not found, not failed
    assert cache.get(key("b", "Linear", "reg")) is b  # unchanged: not reloaded
    session = session_for(cache)
    assert (await ask(session, strat="c", model_type="reg"))["message"] == NOT_FOUND
    assert (await ask(session, strat="a"))["type"] == "success"

    store.batches.clear()
    await cache.refresh()  # the generation token didn't change: no look-up at all
    assert store.batches == []


async def test_refresh_reloads_concurrently_but_at_most_four_at_once(tmp_path):
    store = Store(tmp_path)
    strats = [f"m{i}" for i in range(8)]
    for strat in strats:
        await train(store, key(strat))
    family = Family("DecisionTree", predictor_seconds=0.1)
    cache = ModelCache(store, {"DecisionTree": family})
    for strat in strats:
        await cache.load(key(strat))
    await cache.refresh()
    for strat in strats:
        await train(store, key(strat), seed=2)
    family.most_building = 0
    started = time.perf_counter()
    await cache.refresh()
    assert all(cache.get(key(strat)).version == 2 for strat in strats)
    assert 1 < family.most_building <= 4
    assert time.perf_counter() - started < 8 * 0.1


async def test_remembered_misses_are_bounded_in_bytes(tmp_path):
    store = Store(tmp_path)
    cache = ModelCache(store, FAMILIES)
    # 150 misses of 60 KB (an unknown family: no store look-up) are 9 MB, over the budget.
    keys = [ModelKey(ACCOUNT, f"{i:04d}" + "x" * 60_000, "NoSuchFamily", "class")
            for i in range(150)]
    for each in keys:
        await cache.load(each)
    remembered = [each for each in keys if cache.get(each) is None]
    size = sum(len(k.account_id) + len(k.strat) + len(k.family) + len(k.model_type)
               for k in remembered)
    assert size <= model_cache.MAX_ABSENT_BYTES
    assert len(remembered) >= 130  # the budget is used, not emptied
    assert cache.get(keys[-1]) is None  # the newest stay...
    assert cache.get(keys[0]) is MISSING  # ...the oldest go: asked again, looked up again

    small = ModelCache(store, FAMILIES, max_absent=5)  # and by count, oldest first
    for i in range(8):
        await small.load(key(f"n{i}"))
    assert [small.get(key(f"n{i}")) for i in range(8)] == [MISSING] * 3 + [None] * 5


async def test_an_announced_version_is_swapped_in_without_waiting_for_a_refresh(tmp_path):
    store = Store(tmp_path)
    cache = ModelCache(store, FAMILIES)
    await train(store, key("a"))
    await cache.load(key("a"))
    newer = await train(store, key("a"), seed=1)

    cache.announced(key("a"), newer.version)
    await cache.wait_compiled()
    assert cache.get(key("a")).version == 2
    store.latest_calls.clear()
    cache.announced(key("a"), 2)  # heard twice (its own, then the registry's): nothing to do
    await cache.wait_compiled()
    assert store.latest_calls == []

    await store.delete(newer)
    cache.announced(key("a"), None)  # a version deleted: the newest is looked up
    await cache.wait_compiled()
    assert cache.get(key("a")).version == 1

    await train(store, key("fresh"))
    cache.announced(key("fresh"), 1)  # never asked for here: loaded before the first request
    await cache.wait_compiled()
    assert cache.get(key("fresh")).version == 1
