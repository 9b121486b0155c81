"""The server's operational figures: plain numbers on the hot path, Prometheus at /metrics.

Counting a prediction must cost next to nothing, so the serving code only adds to the plain
attributes of one ``Figures`` per process (no lock: everything runs on the event loop's
thread). ``/metrics`` turns them into Prometheus metric families with prometheus-client's
exposition code. Under ``--workers N`` each worker also writes its figures to a file every
second (``publish``), and whichever worker a scrape reaches adds up every worker's: counters
of a worker that died stay counted (a counter must not go down), its gauges don't.

No figure is labelled with an account, key, strategy or address: only families, model types
and fixed outcome names.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from .worker_pool import alive

# Seconds from a request frame in to its answer out: a prediction takes tens of microseconds,
# a first use of a model (a load) milliseconds.
BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)
AUTH_RESULTS = ("accepted", "invalid_key", "limit_reached", "timeout", "unavailable")
METRICS_DIR_ENV = "NEMBER_METRICS_DIR"  # set by the supervisor for its workers


class Figures:
    """This process's figures; every attribute is a number or a dict of numbers."""

    __slots__ = ("connections_open", "predictions", "request_errors", "latency_buckets",
                 "latency_sum", "latency_count", "auth", "model_loads", "model_compiles",
                 "training_jobs", "training_now", "loop_lag")

    def __init__(self) -> None:
        self.connections_open = 0
        self.predictions: dict[tuple[str, str], int] = {}  # (family, model_type) -> count
        self.request_errors = 0
        self.latency_buckets = [0] * (len(BUCKETS) + 1)  # the last: over every bound
        self.latency_sum = 0.0
        self.latency_count = 0
        self.auth = dict.fromkeys(AUTH_RESULTS, 0)
        self.model_loads = {"loaded": 0, "failed": 0}
        self.model_compiles = {"compiled": 0, "failed": 0}
        self.training_jobs = {"succeeded": 0, "failed": 0}  # finished, by final state
        self.training_now = {"running": 0}  # this process's jobs now (the queue is the board's)
        self.loop_lag = 0.0  # seconds, the worst delay of the loop since the last scrape

    def observe(self, seconds: float) -> None:
        """One request frame answered after ``seconds``."""
        self.latency_buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def count_prediction(self, family: str, model_type: str) -> None:
        key = (family, model_type)
        self.predictions[key] = self.predictions.get(key, 0) + 1

    def to_json(self) -> bytes:
        fields = {name: getattr(self, name) for name in self.__slots__}
        fields["predictions"] = [[*key, n] for key, n in self.predictions.items()]
        return orjson.dumps(fields)

    @classmethod
    def from_json(cls, data: bytes) -> Figures:
        figures, raw = cls(), orjson.loads(data)
        for name in cls.__slots__:
            if name == "predictions":
                figures.predictions = {(family, kind): n for family, kind, n in raw[name]}
            elif name in raw:
                setattr(figures, name, raw[name])
        return figures


FIGURES = Figures()  # this process's


def added(all_figures: Iterable[Figures], live: Iterable[bool]) -> Figures:
    """The sum of several processes' figures; gauges only of the live ones."""
    total = Figures()
    for figures, running in zip(all_figures, live, strict=True):
        for key, n in figures.predictions.items():
            total.predictions[key] = total.predictions.get(key, 0) + n
        total.request_errors += figures.request_errors
        total.latency_buckets = [a + b for a, b in zip(total.latency_buckets,
                                                       figures.latency_buckets, strict=True)]
        total.latency_sum += figures.latency_sum
        total.latency_count += figures.latency_count
        for mine, theirs in ((total.auth, figures.auth), (total.model_loads, figures.model_loads),
                             (total.model_compiles, figures.model_compiles),
                             (total.training_jobs, figures.training_jobs)):
            for name, n in theirs.items():
                mine[name] = mine.get(name, 0) + n
        if running:
            total.connections_open += figures.connections_open
            for state, n in figures.training_now.items():
                total.training_now[state] = total.training_now.get(state, 0) + n
            total.loop_lag = max(total.loop_lag, figures.loop_lag)
    return total


def publish(directory: Path, figures: Figures = FIGURES) -> None:
    """Write this process's figures where its sibling workers read them (atomically)."""
    target = directory / f"{os.getpid()}.json"
    partial = directory / f".{os.getpid()}.json.tmp"
    partial.write_bytes(figures.to_json())
    partial.replace(target)


def gathered(directory: Path | None, figures: Figures = FIGURES) -> Figures:
    """This process's figures, plus every other worker's as last published."""
    if directory is None:
        return figures
    mine, others, live = os.getpid(), [figures], [True]
    for path in directory.glob("*.json"):
        pid = int(path.stem) if path.stem.isdigit() else None
        if pid is None or pid == mine:
            continue
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            others.append(Figures.from_json(path.read_bytes()))
            live.append(alive(pid))
    return added(others, live)


class FiguresCollector(Collector):
    """prometheus-client's view of the figures (of every worker, when there are several)."""

    def __init__(self, directory: Path | None = None, figures: Figures = FIGURES):
        self._directory = directory
        self._figures = figures

    def collect(self) -> Iterator[Any]:
        f = gathered(self._directory, self._figures)
        self._figures.loop_lag = 0.0  # a fresh worst case for the next scrape
        yield GaugeMetricFamily("nember_connections_open",
                                "Authenticated websocket connections open now",
                                value=f.connections_open)
        predictions = CounterMetricFamily("nember_predictions",
                                          "Predictions answered, by model family and type",
                                          labels=["family", "model_type"])
        for (family, model_type), n in sorted(f.predictions.items()):
            predictions.add_metric([family, model_type], n)
        yield predictions
        yield CounterMetricFamily("nember_request_errors",
                                  "Request frames answered with an error", value=f.request_errors)
        cumulative, buckets = 0, []
        for bound, n in zip((*BUCKETS, float("inf")), f.latency_buckets, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily("nember_prediction_seconds",
                                    "Seconds from a request frame in to its answer out",
                                    buckets=buckets, sum_value=f.latency_sum)
        yield _by("nember_authentications", "Authentication attempts by result", "result",
                  f.auth)
        yield _by("nember_model_loads", "Model versions loaded into memory, or failed",
                  "result", f.model_loads)
        yield _by("nember_model_compiles", "Tree models compiled to native code, or failed",
                  "result", f.model_compiles)
        yield _by("nember_training_jobs_finished", "Training jobs finished, by final state",
                  "state", f.training_jobs)
        now = GaugeMetricFamily("nember_training_jobs", "Training jobs running now in this "
                                "server's processes", labels=["state"])
        for state, n in sorted(f.training_now.items()):
            now.add_metric([state], n)
        yield now
        yield GaugeMetricFamily("nember_event_loop_lag_seconds",
                                "The event loop's worst delay since the last scrape, "
                                "over every worker", value=f.loop_lag)


def _by(name: str, documentation: str, label: str, counts: dict[str, int]):
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, n in sorted(counts.items()):
        family.add_metric([value], n)
    return family


async def watch_loop_lag(interval: float = 0.25, figures: Figures = FIGURES) -> None:
    """Measure how late the event loop wakes up: a busy or blocked loop delays every bot."""
    import asyncio

    while True:
        start = time.monotonic()
        await asyncio.sleep(interval)
        lag = time.monotonic() - start - interval
        if lag > figures.loop_lag:
            figures.loop_lag = lag
