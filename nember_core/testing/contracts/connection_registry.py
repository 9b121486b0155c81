"""The ConnectionRegistry contract: limits, listings, and closing a connection wherever it is."""

from __future__ import annotations

import asyncio
import time

import pytest

from nember_core.credentials import new_id
from nember_core.plugin_api import ModelAnnouncements
from nember_core.records import LiveConnection, ModelKey, utcnow

from ..stores import StoreContract, shared


def conn(account_id: str = "acct_1", node: str = "node-1") -> LiveConnection:
    return LiveConnection(id=new_id("conn"), account_id=account_id, key_id="key_1",
                          key_name="bot", remote="203.0.113.7", node=node, opened_at=utcnow())


class Socket:
    """What a server hands the registry: a way to close the connection, remembered here."""

    def __init__(self) -> None:
        self.closed = asyncio.get_running_loop().create_future()

    async def close(self, code: int, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result((code, reason, time.monotonic()))


async def eventually(check, seconds: float = 15.0):
    deadline = time.monotonic() + seconds
    while not (result := await check()):
        assert time.monotonic() < deadline, "not within the time the contract allows"
        await asyncio.sleep(0.05)
    return result


async def _none_listed(store) -> bool:
    return await store.list("acct_1") == []


class ConnectionRegistryContract(StoreContract):
    """The connection_registry contract; subclass it with ``plugin_name`` and ``options``."""

    role = "connection_registry"
    pytestmark = pytest.mark.asyncio

    async def test_an_account_gets_up_to_its_limit(self, store):
        mine = [conn() for _ in range(3)]
        assert [await store.add(c, 2, Socket().close) for c in mine] == [True, True, False]
        assert await store.add(conn("acct_2"), 2, Socket().close)  # others have their own
        await store.remove(mine[0])
        assert await store.add(mine[2], 2, Socket().close)
        assert {c.id for c in await store.list("acct_1")} == {mine[1].id, mine[2].id}

    async def test_listings_show_each_accounts_own_with_their_details(self, store):
        mine, theirs = conn(), conn("acct_2")
        await store.add(mine, 5, Socket().close)
        await store.add(theirs, 5, Socket().close)
        (listed,) = await store.list("acct_1")
        assert (listed.id, listed.key_id, listed.key_name, listed.remote, listed.node) == (
            mine.id, "key_1", "bot", "203.0.113.7", "node-1")
        assert await store.list("acct_3") == []

    async def test_a_removed_connection_is_gone_and_removing_twice_is_harmless(self, store):
        c = conn()
        await store.add(c, 5, Socket().close)
        await store.remove(c)
        await store.remove(c)
        assert await store.list("acct_1") == []
        assert await store.live_among([c.id]) == set()

    async def test_closing_calls_the_sockets_close_with_the_code_and_reason(self, store):
        c, socket = conn(), Socket()
        await store.add(c, 5, socket.close)
        assert await store.close_connection(c.id, 4000, "closed by owner")
        code, reason, _ = await asyncio.wait_for(socket.closed, 2)
        assert (code, reason) == (4000, "closed by owner")
        assert not await store.close_connection("conn_nope", 4000, "closed by owner")

    async def test_live_among_names_the_live_ones(self, store):
        live, gone = conn(), conn("acct_2")
        await store.add(live, 5, Socket().close)
        await store.add(gone, 5, Socket().close)
        await store.remove(gone)
        assert await store.live_among([live.id, gone.id, "conn_nope"]) == {live.id}
        assert await store.live_among([]) == set()

    async def test_the_limit_counts_every_node_even_at_once(self, open_store, provider):
        shared(provider)
        one, two = await open_store("node-1"), await open_store("node-2")
        attempts = [(store, conn(node=node)) for _ in range(10)
                    for store, node in ((one, "node-1"), (two, "node-2"))]
        added = await asyncio.gather(*(store.add(c, 4, Socket().close) for store, c in attempts))
        assert sum(added) == 4
        assert len(await one.list("acct_1")) == len(await two.list("acct_1")) == 4

    async def test_a_close_from_another_node_reaches_the_socket_within_two_seconds(self, open_store,
                                                                                   provider):
        shared(provider)
        holder, other = await open_store("node-1"), await open_store("node-2")
        c, socket = conn(), Socket()
        await holder.add(c, 5, socket.close)
        listed = await eventually(lambda: other.list("acct_1"))
        assert [x.node for x in listed] == ["node-1"]
        asked = time.monotonic()
        assert await other.close_connection(c.id, 4401, "API key revoked")
        code, reason, at = await asyncio.wait_for(socket.closed, 2)
        assert (code, reason) == (4401, "API key revoked")
        print(f"close across nodes: {(at - asked) * 1000:.0f} ms")
        # Closing is asked for; removing it is the holder's part.
        assert await other.live_among([c.id]) == {c.id}

    async def test_a_node_that_stops_leaves_every_listing(self, open_store, provider):
        shared(provider)
        stopping, staying = await open_store("node-1"), await open_store("node-2")
        c = conn()
        await stopping.add(c, 1, Socket().close)
        await open_store.close(stopping)
        assert await eventually(lambda: _none_listed(staying))
        assert await staying.add(conn(node="node-2"), 1, Socket().close)  # its slot is free again

    async def test_a_model_announced_on_one_node_is_heard_on_every_node(self, open_store, provider):
        shared(provider)
        one, two = await open_store("node-1"), await open_store("node-2")
        if not isinstance(one, ModelAnnouncements):
            pytest.skip("this registry announces no models: servers find them by polling")
        heard: dict[str, asyncio.Queue] = {"node-1": asyncio.Queue(), "node-2": asyncio.Queue()}
        one.on_model_announced(lambda key, version: heard["node-1"].put_nowait((key, version)))
        two.on_model_announced(lambda key, version: heard["node-2"].put_nowait((key, version)))
        key = ModelKey("acct_1", "breakout", "DecisionTree", "class")
        asked = time.monotonic()
        await one.announce_model(key, 7)
        await two.announce_model(key, None)  # a version deleted: look the newest up
        for node, queue in heard.items():
            assert await asyncio.wait_for(queue.get(), 2) == (key, 7), node
            assert await asyncio.wait_for(queue.get(), 2) == (key, None), node
        print(f"announcement heard on both nodes in {(time.monotonic() - asked) * 1000:.0f} ms")

    async def test_an_open_store_answers_a_ping(self, store):
        await store.ping()  # what GET /readyz asks of every configured store
