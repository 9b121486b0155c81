"""The SDK against real `nember serve` processes (``pytest -m e2e``): a server killed and
restarted on the same port, a server stopped (1001), and a key revoked from the CLI (4401).

The data is the in-process tier's ``prepared`` folder (an account, a key, example_strategy's
DecisionTree models), made in this process, which is quicker than through the CLI; the
servers are started by tests/conftest.py's ``servers``, which kills them after the test.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from nember_client import (
    AsyncClient,
    ConnectionClosedError,
    ConnectionLostError,
    RequestTimeoutError,
)

from tests.harness import run_cli, write_config

from .conftest import FAMILY, INSIDE, STRAT, eventually

pytestmark = pytest.mark.e2e  # real nember processes: `pytest -m e2e`


@pytest.fixture
def config(prepared, tmp_path):
    """A config of its own (its own port) over the prepared data."""
    return write_config(tmp_path, data_dir=prepared.config.parent / "data",
                        server={"revocation_check_interval": 0.2})


async def test_reconnects_to_a_restarted_server_and_requests_in_flight_fail(
        prepared, config, servers):
    server = await asyncio.to_thread(servers, config)
    reconnections = []
    async with AsyncClient(server.url, prepared.key, max_backoff=0.5, request_timeout=20,
                           on_reconnect=lambda: reconnections.append(True)) as client:
        before = await client.predict(STRAT, FAMILY, "class", INSIDE)
        impatient = AsyncClient(server.url, prepared.key, request_timeout=0.3, reconnect=False)
        await impatient.connect()

        # Killed while requests wait for their answers: stopped first, so that it reads
        # them and answers nothing, then killed (the kernel resets its sockets).
        os.killpg(server.process.pid, signal.SIGSTOP)
        in_flight = [asyncio.ensure_future(client.predict(STRAT, FAMILY, "reg", INSIDE))
                     for _ in range(5)]
        with pytest.raises(RequestTimeoutError):  # a silent server: request_timeout
            await impatient.predict(STRAT, FAMILY, "class", INSIDE)
        assert impatient.connected  # a late answer is no reason to drop the connection
        assert not any(request.done() for request in in_flight)
        await asyncio.to_thread(server.kill)
        lost = await asyncio.gather(*in_flight, return_exceptions=True)
        assert all(isinstance(error, ConnectionLostError) for error in lost), lost
        assert lost[0].code == 1006  # no close frame: a dropped connection
        assert not client.connected
        await eventually(lambda: not impatient.connected, what="the drop")
        with pytest.raises(ConnectionClosedError) as ended:  # reconnect=False: over
            await impatient.predict(STRAT, FAMILY, "class", INSIDE)
        assert ended.value.code == 1006
        await impatient.close()

        opened = len(server.events("connection.open"))
        again = await asyncio.to_thread(servers, config)  # same config: same port
        assert again.port == server.port
        await eventually(lambda: client.connected, timeout=15, what="the reconnection")
        after = await client.predict(STRAT, FAMILY, "class", INSIDE)
        assert (after.seq_num, after.new_model, after.prediction) == (
            1, True, before.prediction)
        assert reconnections == [True]
        # Authenticated again: the new process accepted a connection (the processes on one
        # port share a log file).
        assert len(again.events("connection.open")) == opened + 1

        # Stopped (SIGTERM): the connections are drained with 1001, which is worth a retry.
        # (That a request made meanwhile waits for the reconnection is tested in-process:
        # here a new process's first prediction costs seconds of model loading.)
        await asyncio.to_thread(again.terminate)
        await eventually(lambda: not client.connected, what="the drain")
        third = await asyncio.to_thread(servers, config)
        await eventually(lambda: client.connected, timeout=15, what="the second reconnection")
        assert reconnections == [True, True]
        assert len(third.events("connection.open")) == opened + 2


async def test_a_key_revoked_from_the_cli_closes_with_4401_for_good(
        config, servers, services):
    account = await services.accounts.by_email("trader@example.com")
    key = (await services.keys.create(account.id, "sdk-revoked", "predict")).secret
    server = await asyncio.to_thread(servers, config)
    reconnections = []
    async with AsyncClient(server.url, key, max_backoff=0.2,
                           on_reconnect=lambda: reconnections.append(True)) as client:
        assert client.connected
        await asyncio.to_thread(run_cli, config, "keys", "revoke", key)
        await eventually(lambda: not client.connected, timeout=5, what="the revocation")
        with pytest.raises(ConnectionClosedError) as closed:
            await client.predict(STRAT, FAMILY, "class", INSIDE)
        assert (closed.value.code, closed.value.reason) == (4401, "API key revoked")
        refused_before = len(server.events("auth.refused"))
        await asyncio.sleep(1.0)  # five max_backoffs: no attempt to come back
        assert len(server.events("auth.refused")) == refused_before
        assert len(server.events("connection.open")) == 1
        assert reconnections == [] and not client.connected
