"""The Redis connection registry, several instances on one real Redis (as several nodes are).

The behaviour every registry shares is in tests/contracts/; here, what is Redis's and
several nodes': the limit under concurrent adds from two nodes, a close delivered to the node
that holds the socket (and how fast), an instance that stops beating leaving the listings,
registering again after Redis lost the keys, and a Redis that stops, hangs or comes back.
The last ones run a ``redis-server`` of their own on a free port.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

# The redis extra is optional (tox -e minimal runs without it).
pytest.importorskip("redis")

import nember_redis.registry
from nember_redis import RedisOptions, nember_connection_registries
from nember_redis.registry import STALE_AFTER, RedisConnectionRegistry

from nember_core.plugin_api import LiveConnection, NemberError, PluginContext
from tests.harness import free_port
from tests.shared_services import OwnRedis

HEARTBEAT = 0.2


class Closer:
    """A connection's close callback: records when and how it was called."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []
        self.at: float | None = None
        self.called = asyncio.Event()

    async def __call__(self, code: int, reason: str) -> None:
        self.at = time.perf_counter()
        self.calls.append((code, reason))
        self.called.set()


def conn(conn_id: str, account_id: str = "acct_1", node: str = "a") -> LiveConnection:
    return LiveConnection(id=conn_id, account_id=account_id, key_id="key_1", key_name="bot",
                          remote="10.0.0.7", node=node, opened_at=datetime.now(timezone.utc))


async def open_registry(url: str, prefix: str, node: str, **options) -> RedisConnectionRegistry:
    """Through the provider, as the server opens it."""
    (provider,) = nember_connection_registries()
    settings = {"heartbeat": HEARTBEAT, **options}
    return await provider.create(RedisOptions(url=url, prefix=prefix, **settings),
                                 PluginContext(data_dir=Path("unused"), node=node))


async def until(condition, timeout: float, what: str):
    """Poll the async ``condition`` until truthy; return (its value, seconds taken)."""
    start = time.monotonic()
    while True:
        found = await condition()
        if found:
            return found, time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"no {what} within {timeout}s")
        await asyncio.sleep(0.02)


async def delete_prefix(url: str, prefix: str) -> int:
    """What a FLUSHDB does to this test's keys."""
    import redis.asyncio as redis

    client = redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        return await client.delete(*keys) if keys else 0
    finally:
        await client.aclose()


def stop_beating(registry: RedisConnectionRegistry) -> None:
    """As if the process were killed: no more heartbeats, nothing cleaned up."""
    registry._beating.cancel()
    registry._listening.cancel()


@pytest.fixture
async def pair(redis_url, redis_prefix):
    """Two nodes' registries on the machine's Redis."""
    a = await open_registry(redis_url, redis_prefix, "a")
    b = await open_registry(redis_url, redis_prefix, "b")
    yield a, b
    await a.close()
    await b.close()


def test_options_are_checked_with_clear_messages():
    assert RedisOptions(url="rediss://:secret@cache:6380/2").prefix == "nember:"
    url = "url: expected redis://HOST[:PORT][/DB] or rediss://"
    refused = [
        (dict(url="http://cache:6379"), url),
        (dict(url="redis://"), url),
        (dict(url="redis://:secret@cache:6379/zero"), url),
        (dict(url="redis://:secret@cache:port/0"), url),
        (dict(url="redis://c", prefix=" "), "prefix: expected a non-empty string"),
        (dict(url="redis://c", heartbeat=5), "heartbeat: expected a number of seconds > 0 "
                                             "and <= 2"),
        (dict(url="redis://c", timeout=0), "timeout: expected a number of seconds > 0"),
    ]
    for options, message in refused:
        with pytest.raises(ValueError) as caught:
            RedisOptions(**options)
        assert str(caught.value).startswith(message) and "secret" not in str(caught.value)
    (provider,) = nember_connection_registries()
    assert (provider.name, provider.options, provider.shared_across_processes) == (
        "redis", RedisOptions, True)


async def test_an_unreachable_redis_fails_start_up_in_one_line(tmp_path):
    port = free_port()  # nothing listens there
    with pytest.raises(NemberError) as caught:
        await open_registry(f"redis://:secret@127.0.0.1:{port}/0", "x:", "a", timeout=0.5)
    message = str(caught.value)
    assert message.startswith(f"connection_registry: Redis at 127.0.0.1:{port}/0 failed: ")
    assert "\n" not in message and "secret" not in message


async def test_the_limit_holds_under_concurrent_adds_from_two_nodes(pair):
    a, b = pair
    conns = [conn(f"c{i}", node="ab"[i % 2]) for i in range(40)]
    added = await asyncio.gather(*(
        (a if i % 2 == 0 else b).add(c, 7, Closer()) for i, c in enumerate(conns)))
    assert sum(added) == 7
    accepted = sorted(c.id for c, ok in zip(conns, added, strict=True) if ok)
    for registry in (a, b):
        assert sorted(c.id for c in await registry.list("acct_1")) == accepted
    assert not await a.add(conn("late"), 7, Closer())
    # Another account has its own count.
    assert await b.add(conn("other", account_id="acct_2"), 1, Closer())


async def test_a_close_reaches_the_node_holding_the_socket_fast(pair):
    a, b = pair
    one, closer = conn("c1"), Closer()
    assert await a.add(one, 5, closer)
    one.predictions, one.errors, one.last_request_at = 3, 1, 1700000000.25
    await asyncio.sleep(HEARTBEAT * 2)  # a heartbeat publishes the counters
    (listed,) = await b.list("acct_1")
    assert (listed.node, listed.remote, listed.key_name) == ("a", "10.0.0.7", "bot")
    assert (listed.predictions, listed.errors, listed.last_request_at) == (3, 1, 1700000000.25)
    assert listed.opened_at == one.opened_at
    assert (await a.list("acct_1"))[0] is one  # a's own: the live object
    assert await b.live_among(["c1", "nope"]) == {"c1"}

    latencies = []
    for attempt in range(5):
        closer.called.clear()
        started = time.perf_counter()
        assert await b.close_connection("c1", 4000, f"closed by owner {attempt}")
        await asyncio.wait_for(closer.called.wait(), 2)
        latencies.append(closer.at - started)
    assert closer.calls[-1] == (4000, "closed by owner 4")
    print(f"\nclose latency across nodes: median {sorted(latencies)[2] * 1000:.2f} ms, "
          f"max {max(latencies) * 1000:.2f} ms")
    assert max(latencies) < 2.0  # PROTOCOL §5; typically about a millisecond

    await a.remove(one)
    assert not await b.close_connection("c1", 4000, "closed by owner")
    assert not await b.close_connection("nope", 4000, "closed by owner")
    assert await b.list("acct_1") == [] and await b.live_among(["c1"]) == set()


async def test_an_instance_that_stops_beating_leaves_every_listing(redis_url, redis_prefix):
    a = await open_registry(redis_url, redis_prefix, "a")
    b = await open_registry(redis_url, redis_prefix, "b")
    try:
        assert await a.add(conn("c1"), 1, Closer())
        stop_beating(a)
        assert not await b.add(conn("c2"), 1, Closer())  # still counted for now
        _, took = await until(lambda: _empty(b.list("acct_1")), 15, "c1 leaving the listing")
        assert took < STALE_AFTER * HEARTBEAT + 1
        assert await b.live_among(["c1"]) == set()
        assert not await b.close_connection("c1", 4000, "closed by owner")
        assert await b.add(conn("c2"), 1, Closer())  # its slot is free
    finally:
        await b.close()
        await a._client.aclose()


async def _empty(listing) -> bool:
    return await listing == []


async def _true(value: bool) -> bool:
    return value


async def test_close_removes_the_instance_keys_at_once(pair, redis_url, redis_prefix):
    a, b = pair
    assert await a.add(conn("c1"), 5, Closer())
    assert await b.add(conn("c2"), 5, Closer())
    await a.close()
    assert [c.id for c in await b.list("acct_1")] == ["c2"]
    await b.close()
    assert await delete_prefix(redis_url, redis_prefix) == 0  # nothing left behind


async def test_an_instance_registers_again_after_redis_lost_its_keys(pair, redis_url,
                                                                    redis_prefix):
    a, b = pair
    closer = Closer()
    assert await a.add(conn("c1"), 2, closer)
    assert await b.add(conn("c2", node="b"), 2, Closer())
    assert await delete_prefix(redis_url, redis_prefix) > 0  # Redis restarted empty
    assert await b.list("acct_1") == [b._local["c2"]]  # only its own, from memory
    # Adding first writes this node's connections again, so the limit still counts them (b's
    # count again from b's next heartbeat).
    assert not await a.add(conn("c3"), 1, Closer())
    listed, took = await until(
        lambda: _ids(a.list("acct_1"), {"c1", "c2"}), 2, "both registered again")
    assert took <= HEARTBEAT * 2
    assert await a.live_among(["c1", "c2"]) == {"c1", "c2"}
    assert await b.close_connection("c1", 4000, "closed by owner")
    await asyncio.wait_for(closer.called.wait(), 2)


async def _ids(listing, expected: set[str]) -> bool:
    return {c.id for c in await listing} == expected


# A redis-server of the test's own (tests/shared_services.py), to stop, pause and restart.


@pytest.fixture
def own_redis(tmp_path):
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.kill()


class Logs:
    """Stands in for the registry's logger: the events it logged, by level."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __getattr__(self, level: str):
        return lambda event, **fields: self.events.append((level, event))


async def test_an_outage_refuses_adds_fast_and_the_instance_recovers(own_redis, monkeypatch):
    logs = Logs()
    monkeypatch.setattr(nember_redis.registry, "log", logs)
    a = await open_registry(own_redis.url, "nember:", "a", timeout=0.5)
    b = None
    try:
        held, closer = conn("c1"), Closer()
        ending = conn("c2")
        assert await a.add(held, 5, closer) and await a.add(ending, 5, Closer())
        if True:  # the outage
            own_redis.stop()
            for attempt in range(3):
                started = time.monotonic()
                with pytest.raises(Exception):  # noqa: B017 - whatever the client raises
                    await a.add(conn(f"new{attempt}"), 5, Closer())
                assert time.monotonic() - started < 0.5 + 0.3
            await a.remove(ending)  # no raise: unlisted once Redis is back
            held.predictions = 9  # live connections keep working meanwhile
            await asyncio.sleep(HEARTBEAT * 8)  # many failed heartbeats

            own_redis.start()  # back, empty
            b = await open_registry(own_redis.url, "nember:", "b")
            listed, took = await until(lambda: _ids(b.list("acct_1"), {"c1"}), 5,
                                       "c1 registered again")
            print(f"\nrecovered {took:.2f} s after Redis's return")
            assert listed and (await b.list("acct_1"))[0].predictions == 9
            # The subscription is back by itself, and a close from another node arrives.
            await until(lambda: _subscribed(b, a), 5, "a subscribed again")
            started = time.perf_counter()
            assert await b.close_connection("c1", 4000, "closed by owner")
            await asyncio.wait_for(closer.called.wait(), 2)
            assert closer.at - started < HEARTBEAT / 2  # the channel, not the heartbeat
            assert await a.add(conn("c3"), 5, Closer())
        store = [(level, e) for level, e in logs.events if e.startswith("registry.store_")]
        assert store == [("error", "registry.store_unreachable"),
                         ("info", "registry.store_recovered")]  # once each, not every beat
    finally:
        await a.close()
        if b is not None:
            await b.close()


async def _subscribed(other: RedisConnectionRegistry, registry: RedisConnectionRegistry):
    channel = registry._closes
    return dict(await other._client.pubsub_numsub(channel)).get(channel) == 1


async def test_a_hung_redis_fails_calls_within_the_timeout_without_blocking(own_redis):
    a = await open_registry(own_redis.url, "nember:", "a", timeout=0.5)
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        own_redis.pause()  # accepts bytes, answers nothing
        started = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017 - a timeout, as the client reports it
            await a.add(conn("c1"), 5, Closer())
        took = time.monotonic() - started
        assert 0.4 < took < 0.5 + 0.3
        with pytest.raises(Exception):  # noqa: B017
            await a.list("acct_1")
        assert ticks >= 10  # the event loop kept running meanwhile
        own_redis.resume()
        await until(lambda: _added(a, conn("c2")), 5, "an add accepted again")
    finally:
        own_redis.resume()
        ticker.cancel()
        await a.close()


async def _added(registry, one: LiveConnection) -> bool:
    try:
        return await registry.add(one, 5, Closer())
    except Exception:
        return False


async def test_a_failed_remove_is_retried_before_its_keys_would_expire(tmp_path):
    """Redis comes back with its data (an RDB file): the connection removed while it was
    away is unlisted by the next heartbeat, not left until its TTL."""
    server = OwnRedis(tmp_path, persist=True)
    server.start()
    heartbeat = 2.0  # keys live 10 s: the retry must come well before
    a = await open_registry(server.url, "nember:", "a", heartbeat=heartbeat, timeout=0.5)
    b = None
    try:
        one = conn("c1")
        assert await a.add(one, 5, Closer())
        server.stop()
        await a.remove(one)
        assert "c1" in a._unremoved
        server.start()
        b = await open_registry(server.url, "nember:", "b", heartbeat=heartbeat)
        _, took = await until(lambda: _empty(b.list("acct_1")), 10, "c1 unlisted")
        assert took <= heartbeat + 1
        # The retry's bookkeeping follows its removal by a moment: other nodes may see it first.
        await until(lambda: _true(not a._unremoved), 1, "the retry forgotten")
    finally:
        await a.close()
        if b is not None:
            await b.close()
        server.kill()
