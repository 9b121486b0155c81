"""The blocking Client, in-process. The server runs in the test's event loop, so each test's
blocking part runs in a worker thread (asyncio.to_thread), as a script would call it."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from nember_client import (
    AuthenticationError,
    Client,
    ConnectionClosedError,
    ModelNotFoundError,
    Prediction,
)

from .conftest import FAMILY, INSIDE, OUTSIDE, STRAT


def client_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "nember-client"]


async def test_the_sync_client_predicts_and_closes(url, prepared):
    def script():
        with Client(url, prepared.key) as client:
            assert client.connected
            answer = client.predict(STRAT, FAMILY, "class", INSIDE, probabilities=True,
                                    details=True)
            with pytest.raises(ModelNotFoundError) as missing:
                client.predict("no_such_strategy", FAMILY, "class", INSIDE, request_id="x")
        assert not client.connected
        with pytest.raises(ConnectionClosedError):
            client.predict(STRAT, FAMILY, "class", INSIDE)
        return answer, missing.value

    answer, missing = await asyncio.to_thread(script)
    assert isinstance(answer, Prediction) and answer.seq_num == 1
    assert answer.prediction in answer.probabilities and answer.model.version == 1
    assert (missing.request_id, missing.seq_num) == ("x", 2)
    assert client_threads() == []  # its loop's thread ended with it


async def test_calls_from_many_threads_share_one_pipelined_connection(url, prepared):
    def script():
        with Client(url, prepared.key) as client:
            expected = {kind: {name: client.predict(STRAT, FAMILY, kind, points).prediction
                               for name, points in (("in", INSIDE), ("out", OUTSIDE))}
                        for kind in ("class", "reg")}

            def worker(n: int) -> list[tuple[str, str, Prediction]]:
                done = []
                for i in range(25):
                    kind, name = ("class", "reg")[i % 2], ("in", "out")[(n + i) % 2]
                    answer = client.predict(STRAT, FAMILY, kind,
                                            INSIDE if name == "in" else OUTSIDE,
                                            request_id=f"{n}-{i}")
                    done.append((kind, name, answer))
                return done

            with ThreadPoolExecutor(8) as pool:
                per_thread = list(pool.map(worker, range(8)))
        return expected, per_thread

    expected, per_thread = await asyncio.to_thread(script)
    seqs = []
    for n, done in enumerate(per_thread):
        for i, (kind, name, answer) in enumerate(done):
            assert answer.request_id == f"{n}-{i}"
            assert answer.prediction == expected[kind][name]
            seqs.append(answer.seq_num)
    assert sorted(seqs) == list(range(5, 5 + 200))  # one connection, after the four above


async def test_a_refused_key_raises_from_the_with_statement_and_leaves_no_thread(url):
    def script():
        with pytest.raises(AuthenticationError) as refused, Client(url, "nmb_not-a-key"):
            pass
        return refused.value

    refused = await asyncio.to_thread(script)
    assert refused.message == "Invalid API key."
    assert client_threads() == []
