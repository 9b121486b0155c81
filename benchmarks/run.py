"""Nember's benchmark: every family against the floor of this machine, in one run.

    .venv/bin/python benchmarks/run.py [--families DecisionTree,XGBoost] [--seconds 2]
                                       [--idle 1000,10000] [--json benchmarks/results/latest.json]
                                       [--pin]  (below: the honest mode on a small machine)

It trains each family (class and reg, window 2, the demo's price series) in a throw-away data
folder, starts `nember serve` and a bare aiohttp echo server (the floor: same stack, no work),
and drives both from a load generator in its own process:

- one connection, sequential round trips: p50, p90, p99, p99.9, max (after a warm-up);
- 16, 64 and 256 connections: predictions per second and p50/p99;
- each family's raw in-process predict cost, and the whole per-frame cost in-process (tree
  models compiled to native code first, as a server does when it loads them; --no-compile
  measures their NumPy and library paths instead), also with PROTOCOL §7's opt-in fields
  (``details``; ``probabilities`` for class models);
- server memory (RSS) with 0, 1,000 and 10,000 idle authenticated connections.

It prints tables and the target ratios (Nember ÷ floor), and writes everything as JSON.

--pin: the honest mode on a small machine (the headline)
--------------------------------------------------------

    .venv/bin/python benchmarks/run.py --pin [--families ...] [--seconds 2] [--idle '']
                                       [--client picows|aiohttp] [--quiet-wait 5]
                                       [--nice -10] [--no-first-prediction] [--repeats 3]

Unpinned, the server, the floor and the load generator share every core: once the server is
busy the load generator competes with it, and on a 2-core machine the 64-connection figures
say as much about the load generator as about the server. On a 2-core machine the pinned mode
is the honest one. With --pin, Nember (``nember serve``, one process: with ``--workers 1`` it
serves in that process, whose CPU is measured) and the echo floor run on CPU 1 (``taskset -c
1``; Nember's compile and training pools inherit it), each load generator on CPU 0, and so
does this script once the models are trained. The load generator is picows (a websocket client
in Cython, ``pip install picows``) when it is installed, else aiohttp (--client chooses): an
aiohttp client costs about as much CPU per message as the floor itself, so it would cap the
floor's throughput rather than measure it.

Every measured window (the sequential round trips; each concurrency level) reads utime+stime
of the server process from /proc/PID/stat (fields 14 and 15, clock ticks; the kernel keeps
their sum equal to the scheduler's exact run time) at its two ends, and divides by the answers
received in between: **server CPU µs per answer**, Nember's per prediction beside the floor's
per echoed frame. The floor's sequential and 64-connection runs are measured again right
before each model's, and each ratio uses that pair (this machine's speed drifts over a run).
With --repeats N (3 by default) those four windows run N times in turn (floor, floor, model,
model; again), and so do the floor's and Nember's accept storms: each figure is the median of
its N windows. One 2-second window here can be 30 % off the next, so a single one would
decide a verdict by luck.
Sequential windows last --seconds and at least 4,000 round trips, after 1,000 of warm-up.
Before each window the run waits until both servers are idle and, for up to --quiet-wait
seconds, until nothing else runs on the two cores (other people's tests on a shared machine).
On a machine that stays busy, --nice -10 (root) runs the servers and load generators ahead of
the rest; the verdicts say which phases had company either way.

The order of a --pin run:

1. *Before native code*: the server starts without the compiled libraries (moved away after
   training), so each tree model's first request loads it on its NumPy or library path and
   starts compiling it (one worker process, nice 19, on the server's core). Per model, right
   after that first answer: 0.5 s at 64 connections (after 0.17 s of warm-up), then 0.5 s
   sequential. ``native after`` is when the server logged ``model.loaded ... native=true`` for
   it, counted from its first request; a ``*`` marks a phase that the switch fell inside (its
   figures mix both paths).
2. The run waits until the server has logged ``model.loaded ... native=true`` for every tree
   model: everything after is measured on compiled trees.
3. The floor, then per model: the floor's sequential and 64-connection runs and the model's
   (--repeats times, in turn), then its 16 and 256 connections (--seconds each).
   Then *accepts* (picows only): 64 bots reconnecting at once for --seconds, each connecting,
   sending its key, waiting for ``Valid API key.`` (which comes after the durable SQLite
   charge) and closing: accepts per second, connect-to-answer p50/p99, server CPU per
   accept; target >= 2,000/s. The echo floor is stormed the same way first: its rate is what
   aiohttp's upgrade and close alone allow on this machine.
4. *First prediction after a start* (unless --no-first-prediction): a fresh ``nember serve``
   with an XGBoost class model stored (trained for this if XGBoost is not among --families).
   A client, started and imported beforehand, polls the port every millisecond and (a) as
   soon as it accepts, or (b) 4 s after, connects, authenticates and sends one prediction:
   (a) is timed from the port accepting, (b) from connecting. Each runs twice: with the
   model's compiled library on disk (a restart) and without it (the first start after
   training). The server's log says when, after listening, the families' warm-up
   (``families.warmed``) and the model's load (``model.loaded``) ended.

How to read it. The headline comes first: per model, server CPU µs per answer (sequential and
at 64 connections), sequential p50 and p99, and predictions per second at 64 connections,
each as Nember, floor, ratio (Nember ÷ floor) and PASS/FAIL against the targets: CPU <= 2 x
the floor's (both columns), p50 <= 1.5 x, p99 <= 2 x, 64-connection throughput >= 0.5 x. Then
a verdict per model, marked ``noisy`` where something else used more than 15 % of either core
during one of its four phases (its figures are then this machine's load as much as Nember's).
The cores table says who was busy at 64 connections: a server near 100 % is the limit being
measured; a load generator near 100 % would mean it limits the throughput instead. The
ratios are the meaningful part: the absolute numbers are this machine's. Then the tables
before native code and of the first prediction, then the unpinned mode's tables, filled from
this run. JSON (default benchmarks/results/pinned.json): the unpinned mode's keys, each
result gaining ``cpu`` (see benchmarks/loadgen.py) and ``settled_s``, plus ``pinned``: the
cores, the client, ``headline``, ``before_native``, ``compile_wait_seconds``,
``first_prediction`` and the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from loadgen import TICK, busy_ticks, descendant_ticks, process_ticks

HERE = Path(__file__).resolve().parent
NEMBER = str(Path(sys.executable).with_name("nember"))
DEFAULT_LOOP = "uvloop" if find_spec("uvloop") else "asyncio"  # Nember's ``auto``
FAMILIES = ["DecisionTree", "RandomForest", "ExtraTrees", "GradientBoosting", "Linear",
            "XGBoost", "LightGBM"]
LEVELS = (16, 64, 256)
POINTS = [{"point1": 3.1, "point2": -2.0}, {"point1": 1.2, "point2": 0.4}]


STARTED = time.monotonic()


def say(message: str) -> None:
    """Progress on stderr, with the seconds since the start."""
    print(f"[{time.monotonic() - STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"a server exited early (port {port})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on port {port}")


def rss_mib(pid: int) -> float:
    """The resident memory of a process and its descendants (``--workers``: all of them)."""
    total = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1]) / 1024
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                total += rss_mib(int(child))
            except OSError:  # it just exited
                pass
    return total


# --pin sets these: the load generator's taskset prefix and its websocket client; and what
# ``settle`` watches before each measured phase.
LOADGEN: dict = {"prefix": [], "client": None}
QUIET: dict = {"pids": [], "cores": None, "wait": 0.0, "nice": 0}


def loadgen(*args: str, cpu_pid: int | None = None) -> dict:
    """Run benchmarks/loadgen.py; ``cpu_pid``: the server whose CPU it measures too."""
    extra = ["--client", LOADGEN["client"]] if LOADGEN["client"] else []
    if cpu_pid is not None:
        extra += ["--cpu-pid", str(cpu_pid)]
    out = subprocess.run(
        [*LOADGEN["prefix"], sys.executable, str(HERE / "loadgen.py"), *args, *extra],
        capture_output=True, text=True, timeout=600,
    )
    if out.returncode:
        sys.exit(f"load generator failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def frame(family: str, model_type: str, **extensions) -> str:
    return orjson.dumps({"strat_name": "bench", "model_name": family, "model_type": model_type,
                         "DataPoints": POINTS, **extensions}).decode()


# --- set-up and in-process costs ---------------------------------------------------------

async def prepare(config: Path, folder: Path, families: list[str],
                  compile_trees: bool, also: tuple[str, ...] = ()) -> tuple[str, dict]:
    """Account, key and models (compiled, as the server will find them); and each model's
    raw and whole-frame cost in-process. ``also``: families trained too, not measured."""
    from nember_core.app.demo import write_prices
    from nember_core.app.logs import configure
    from nember_core.app.nember import Nember
    from nember_core.records import LiveConnection, ModelKey, utcnow
    from nember_core.services import Services, TrainingRequest
    from nember_core.serving.model_cache import ModelCache
    from nember_core.serving.session import PredictionSession, RateLimiter
    from nember_core.trees.compiler import TreeCompiler

    nember = Nember.load(str(config))
    configure("warning")
    stores = await nember.open()
    services = Services(nember.config, nember.families, stores)
    compiler = TreeCompiler(nember.config.data_dir / "compiled") if compile_trees else None
    try:
        prices = folder / "prices.csv"
        write_prices(prices)
        account = await services.accounts.create("bench@example.com", "benchmark-pw")
        key = (await services.keys.create(account.id, "bench")).secret
        # No batching here: this measures one frame's own cost, start to end.
        cache = ModelCache(stores.model_store, nember.families, batch_above_us=None,
                           compiler=compiler)
        names = [(family, model_type, target) for family in families
                 for model_type, target in (("class", "direction"), ("reg", "next_return"))]
        extra = [(family, "class", "direction") for family in also if family not in families]
        for family, model_type, target in names + extra:
            say(f"  training {family} {model_type}")
            await services.models.train(account.id, TrainingRequest(
                strat="bench", family=family, model_type=model_type, data=prices,
                target=target, window=2, features=["point1", "point2"]))
            # Loading starts compiling its trees in the background, while the next trains.
            await cache.load(ModelKey(account.id, "bench", family, model_type))
        say("  waiting for the compiler")
        await cache.wait_compiled()
        costs = {}
        for family, model_type, _ in names:
            model = cache.get(ModelKey(account.id, "bench", family, model_type))
            row = model.extractor.row(POINTS)
            raw = model.predictor  # the family's predictor, as the hot path calls it
            conn = LiveConnection(id="bench", account_id=account.id, key_id="bench",
                                  key_name="bench", remote="", node="", opened_at=utcnow())
            session = PredictionSession(conn, key, cache, RateLimiter(1e12, 10**12))
            text = frame(family, model_type)
            session.answer(text, True)
            costs[f"{family}/{model_type}"] = {
                "predict_us": _time_per_call(lambda raw=raw, row=row: raw(row)),
                "frame_us": _time_per_call(
                    lambda session=session, text=text: session.answer(text, True)
                ),
                "native": model.native,
            }
            opt_in = {"details": frame(family, model_type, details=True)}
            if model_type == "class":
                opt_in["probabilities"] = frame(family, model_type, probabilities=True)
            for name, text in opt_in.items():
                session.answer(text, True)
                costs[f"{family}/{model_type}"][f"frame_{name}_us"] = _time_per_call(
                    lambda session=session, text=text: session.answer(text, True))
        return key, costs
    finally:
        if compiler is not None:
            await compiler.close()
        await stores.close()


def _time_per_call(call, calls: int = 2000, rounds: int = 5) -> float:
    best = []
    for _ in range(rounds):
        started = time.perf_counter_ns()
        for _ in range(calls):
            call()
        best.append((time.perf_counter_ns() - started) / calls / 1000)
    return float(np.median(best))


# --- the run -----------------------------------------------------------------------------

def sequential(url: str, key: str, text: str) -> dict:
    return loadgen("latency", url, key, text, "--requests", "4000", "--warmup", "1000")


def measure(url: str, key: str, text: str, seconds: float, label: str,
            floor_url: str | None = None) -> dict:
    say(f"  measuring {label}")
    result = {}
    if floor_url:  # the floor again, right before: this machine's speed drifts over a run
        result["floor_sequential"] = sequential(floor_url, key, frame("DecisionTree", "class"))
    result["sequential"] = sequential(url, key, text)
    for level in LEVELS:
        result[str(level)] = loadgen("throughput", url, key, text, "--connections", str(level),
                                     "--seconds", str(seconds))
    return result


def idle_memory(url: str, key: str, pid: int, counts: list[int]) -> dict:
    memory = {"0": rss_mib(pid)}
    for count in counts:
        say(f"  holding {count} idle connections")
        holder = subprocess.Popen(
            [*LOADGEN["prefix"], sys.executable, str(HERE / "loadgen.py"), "idle", url, key,
             "--connections", str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        ready = json.loads(holder.stdout.readline())
        time.sleep(1.0)  # let the server settle
        memory[str(count)] = rss_mib(pid)
        memory[f"{count}_opened"] = ready["ready"]
        holder.stdin.close()
        holder.wait(120)
        time.sleep(1.0)
    return memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--seconds", type=float, default=1.5, help="per throughput level")
    parser.add_argument("--idle", default="1000,10000", help="idle connection counts ('' skips)")
    parser.add_argument("--json", type=Path, help="default: benchmarks/results/latest.json, "
                        "with --pin benchmarks/results/pinned.json")
    parser.add_argument("--no-batching", action="store_true", help="serve without micro-batching")
    parser.add_argument("--no-compile", action="store_true",
                        help="serve tree models without compiling them to native code")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes sharing the port (nember serve --workers)")
    parser.add_argument("--event-loop", choices=["uvloop", "asyncio"], default=DEFAULT_LOOP,
                        help="Nember's and the echo floor's (default: uvloop when installed, "
                        "as Nember's own default)")
    parser.add_argument("--pin", action="store_true",
                        help="server and floor on CPU 1, load generator on CPU 0, server CPU "
                        "per prediction (the module's doc)")
    parser.add_argument("--client", choices=["aiohttp", "picows"],
                        help="the load generator's websocket client (default: aiohttp; with "
                        "--pin picows when installed)")
    parser.add_argument("--no-first-prediction", action="store_true",
                        help="--pin: skip the first prediction after a fresh server start")
    parser.add_argument("--quiet-wait", type=float, default=5.0,
                        help="--pin: before each phase, wait up to this many seconds for the "
                        "two cores to be free of other work")
    parser.add_argument("--repeats", type=int, default=3,
                        help="--pin: windows per headline phase, in turn with the floor's; "
                        "each figure is their median")
    parser.add_argument("--nice", type=int, default=0,
                        help="--pin: run the servers and load generators at this niceness "
                        "(-10: ahead of other people's work on a shared machine; needs root)")
    args = parser.parse_args()
    families = [f for f in args.families.split(",") if f]
    if args.json is None:
        args.json = HERE / "results" / ("pinned.json" if args.pin else "latest.json")
    if args.pin:
        main_pinned(args, families)
        return
    LOADGEN["client"] = args.client
    started = time.monotonic()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port, echo_port = free_port(), free_port()
        config = write_config(folder, port, args, "warning")
        say("preparing (training every family)...")
        key, costs = asyncio.run(prepare(config, folder, families, not args.no_compile))

        echo = subprocess.Popen([sys.executable, str(HERE / "echo_server.py"), str(echo_port),
                                 *(["uvloop"] if args.event_loop == "uvloop" else [])])
        server = subprocess.Popen([NEMBER, "--config", str(config), "serve"])
        try:
            wait_listening(echo_port, echo)
            wait_listening(port, server)
            time.sleep(2 if args.workers > 1 else 0)  # the other workers' start-up
            echo_url, url = f"ws://127.0.0.1:{echo_port}/ws", f"ws://127.0.0.1:{port}/ws"
            results = {"floor": measure(echo_url, key, frame("DecisionTree", "class"),
                                        args.seconds, "echo floor")}
            for family in families:
                for model_type in ("class", "reg"):
                    results[f"{family}/{model_type}"] = measure(
                        url, key, frame(family, model_type), args.seconds,
                        f"{family} {model_type}", floor_url=echo_url)
            counts = [int(c) for c in args.idle.split(",") if c]
            memory = idle_memory(url, key, server.pid, counts) if counts else {}
            memory_echo = {"0": rss_mib(echo.pid)}
        finally:
            for process in (server, echo):
                process.terminate()
                process.wait(30)

    report = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "seconds_per_level": args.seconds, "workers": args.workers, "results": results,
        "in_process": costs,
        "memory_mib": memory, "echo_memory_mib": memory_echo,
        "took_seconds": round(time.monotonic() - started, 1),
    }
    report["ratios"] = ratios(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(render(report))
    print(f"\n(written to {args.json}; the whole run took {report['took_seconds']} s)")


def write_config(folder: Path, port: int, args: argparse.Namespace, log_level: str) -> Path:
    config = folder / "nember.yaml"
    config.write_text(
        f"data_dir: data\nlog: {{level: {log_level}}}\ndashboard: {{enabled: false}}\n"
        f"server:\n  port: {port}\n  max_connections_per_account: 20000\n"
        # a benchmark's tight loop would hit the per-connection rate limit: lift it
        "  rate_limit: {per_second: 100000000, burst: 100000000}\n"
        f"  micro_batching: {'false' if args.no_batching else 'true'}\n"
        f"  event_loop: {args.event_loop}\n"
        f"  compile_trees: {'false' if args.no_compile else 'true'}\n"
        f"  workers: {args.workers}\n"
    )
    return config


# --- --pin: the server on one core, the load generator on the other ---------------------

CPU_TARGET, P50_TARGET, P99_TARGET, THROUGHPUT_TARGET = 2.0, 1.5, 2.0, 0.5
ACCEPTS_TARGET = 2000  # authenticated (and durably charged) connections per second
FLOOR_FRAME = frame("DecisionTree", "class")  # what the floor echoes (any frame would do)


def pin_cpus() -> tuple[int, int]:
    """(the server's core, the load generator's): the second and first this process may use,
    CPU 1 and CPU 0 on a 2-core machine."""
    if shutil.which("taskset") is None:
        sys.exit("--pin needs taskset (util-linux)")
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        sys.exit(f"--pin needs two cores; this process may use {allowed}")
    return allowed[1], allowed[0]


def taskset(cpu: int) -> list[str]:
    """The prefix that runs a command on ``cpu`` (and at --nice, when given)."""
    nice = ["nice", "-n", str(QUIET["nice"])] if QUIET["nice"] else []
    return ["taskset", "-c", str(cpu), *nice]


def log_events(path: Path) -> list[dict]:
    """The server's JSON log events, each with ``at``: its timestamp in epoch seconds."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
            stamp = event["timestamp"].replace("Z", "+00:00")  # Python 3.10 wants the offset
            event["at"] = datetime.fromisoformat(stamp).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        events.append(event)
    return events


def loaded_events(events: list[dict], name: str) -> list[dict]:
    family, model_type = name.split("/")
    return [e for e in events if e.get("event") == "model.loaded"
            and e.get("family") == family and e.get("model_type") == model_type]


def native_since(events: list[dict], name: str) -> float | None:
    """When the server logged ``model.loaded ... native=true`` for the model, if it did."""
    return next((e["at"] for e in loaded_events(events, name) if e.get("native")), None)


def settle() -> float:
    """Before a measured phase: wait until the servers are idle (under 10 % of a core) and,
    for up to QUIET["wait"] seconds, until nothing else runs on the two cores (under 10 % of
    each; 0.5 s samples): on a shared machine, a phase starts between other people's bursts
    when it can. Returns the seconds waited."""
    pids, (server_core, client_core) = QUIET["pids"], QUIET["cores"]

    def ours() -> int:
        total = 0
        for pid in pids:
            try:
                total += process_ticks(pid) + descendant_ticks(pid)
            except OSError:
                pass
        return total

    started = time.monotonic()
    while True:
        t0, a, cores0 = time.monotonic(), ours(), busy_ticks()
        time.sleep(0.5)
        t1, b, cores1 = time.monotonic(), ours(), busy_ticks()
        busy = (b - a) / TICK / (t1 - t0)
        other = max(
            (cores1[f"cpu{server_core}"] - cores0[f"cpu{server_core}"] - (b - a)) / TICK,
            (cores1[f"cpu{client_core}"] - cores0[f"cpu{client_core}"]) / TICK,  # this script
        ) / (t1 - t0)
        waited = t1 - started
        if (busy < 0.1 and (other < 0.1 or waited >= QUIET["wait"])) or waited >= 30:
            return waited


def pinned_phase(*args: str, pid: int) -> dict:
    """One measured phase of --pin: settle, then the load generator measuring ``pid``."""
    waited = settle()
    result = loadgen(*args, cpu_pid=pid)
    result["settled_s"] = waited
    return result


def sequential_pinned(url: str, key: str, text: str, seconds: float, pid: int) -> dict:
    return pinned_phase("latency", url, key, text, "--requests", "4000", "--warmup", "1000",
                        "--min-seconds", str(seconds), pid=pid)


def median_of(runs: list[dict]) -> dict:
    """One phase's result from its windows: each number the median of the windows' (anything
    else the first window's), and how many there were."""
    def merge(values: list) -> Any:
        first = values[0]
        if isinstance(first, dict):
            return {field: merge([value[field] for value in values]) for field in first}
        if isinstance(first, (int, float)) and not isinstance(first, bool) and all(
                isinstance(value, (int, float)) for value in values):
            return statistics.median(values)
        return first
    return {**merge(runs), "windows": len(runs)}


def measure_pinned(url: str, key: str, text: str, seconds: float, label: str, pid: int,
                   floor_url: str | None = None, floor_pid: int | None = None,
                   repeats: int = 1) -> dict:
    say(f"  measuring {label}")
    runs: dict[str, list[dict]] = {"floor_sequential": [], "floor_64": [], "sequential": [],
                                   "64": []}
    for _ in range(repeats):  # in turn: a drift in the machine's speed hits both alike
        if floor_url and floor_pid:  # the floor again, right before each model's
            runs["floor_sequential"].append(sequential_pinned(floor_url, key, FLOOR_FRAME,
                                                              seconds, floor_pid))
            runs["floor_64"].append(pinned_phase("throughput", floor_url, key, FLOOR_FRAME,
                                                 "--connections", "64", "--seconds",
                                                 str(seconds), pid=floor_pid))
        runs["sequential"].append(sequential_pinned(url, key, text, seconds, pid))
        runs["64"].append(pinned_phase("throughput", url, key, text, "--connections", "64",
                                       "--seconds", str(seconds), pid=pid))
    result = {phase: median_of(windows) for phase, windows in runs.items() if windows}
    for level in LEVELS:
        if level != 64:
            result[str(level)] = pinned_phase("throughput", url, key, text, "--connections",
                                              str(level), "--seconds", str(seconds), pid=pid)
    return result


def before_native(url: str, key: str, names: list[str], pid: int) -> dict:
    """Each tree model's first seconds on a server that has not compiled it yet: its first
    request loads it and starts its compile, then 0.5 s at 64 connections (after a 0.17 s
    warm-up), then 0.5 s sequential. 64 connections come first: a busy server leaves the
    compile (nice 19, on its core) little time, so the switch tends to come later. When it
    came is filled in afterwards."""
    out = {}
    for name in names:
        text = frame(*name.split("/"))
        say(f"  before native code: {name}")
        concurrent = loadgen("throughput", url, key, text, "--connections", "64", "--seconds",
                             "0.5", "--prime", cpu_pid=pid)
        out[name] = {
            "first_request_at": concurrent["primed_at"],
            "64": concurrent,
            "sequential": loadgen("latency", url, key, text, "--requests", "200", "--warmup",
                                  "20", "--min-seconds", "0.5", cpu_pid=pid),
        }
    return out


def wait_native(log_path: Path, names: list[str], server: subprocess.Popen,
                timeout: float = 900) -> dict[str, float]:
    """Until the server has logged ``model.loaded ... native=true`` for every model in
    ``names``: when it did, per model."""
    deadline = time.monotonic() + timeout
    while True:
        events = log_events(log_path)
        found = {name: native_since(events, name) for name in names}
        if all(found.values()):
            return found  # type: ignore[return-value]
        failed = [e for e in events if e.get("event") in ("model.compile_failed",
                                                          "compiler.failed",
                                                          "compiler.unavailable")]
        if failed:
            sys.exit(f"the server could not compile: {failed[0]}")
        if server.poll() is not None:
            sys.exit("the server exited while compiling")
        if time.monotonic() > deadline:
            missing = [name for name, at in found.items() if at is None]
            sys.exit(f"not native after {timeout} s: {missing}")
        time.sleep(0.25)


def headline(results: dict) -> dict:
    """Per model: Nember against the floor measured right before it, and the targets."""
    out = {}
    for name, result in results.items():
        if name == "floor":
            continue
        seq, conc = result["sequential"], result["64"]
        floor_seq, floor_conc = result["floor_sequential"], result["floor_64"]
        row = {
            "cpu_us_sequential": seq["cpu"]["server_us_per_answer"],
            "floor_cpu_us_sequential": floor_seq["cpu"]["server_us_per_answer"],
            "cpu_us_64": conc["cpu"]["server_us_per_answer"],
            "floor_cpu_us_64": floor_conc["cpu"]["server_us_per_answer"],
            "p50": seq["p50"], "floor_p50": floor_seq["p50"],
            "p99": seq["p99"], "floor_p99": floor_seq["p99"],
            "per_second_64": conc["per_second"], "floor_per_second_64": floor_conc["per_second"],
        }
        ratio = {
            "cpu_sequential": row["cpu_us_sequential"] / row["floor_cpu_us_sequential"],
            "cpu_64": row["cpu_us_64"] / row["floor_cpu_us_64"],
            "p50": row["p50"] / row["floor_p50"],
            "p99": row["p99"] / row["floor_p99"],
            "throughput_64": row["per_second_64"] / row["floor_per_second_64"],
        }
        passed = {
            "cpu_sequential": ratio["cpu_sequential"] <= CPU_TARGET,
            "cpu_64": ratio["cpu_64"] <= CPU_TARGET,
            "p50": ratio["p50"] <= P50_TARGET,
            "p99": ratio["p99"] <= P99_TARGET,
            "throughput_64": ratio["throughput_64"] >= THROUGHPUT_TARGET,
        }
        out[name] = {**row, "ratios": ratio, "pass": passed, "all_pass": all(passed.values()),
                     # other work on the two cores (fraction of one), per phase: noise
                     "other_busy": {phase: _noise(result[phase]) for phase in
                                    ("floor_sequential", "floor_64", "sequential", "64")}}
    return out


def first_prediction(config: Path, compiled: Path, folder: Path, port: int, key: str,
                     server_cpu: int, client_cpu: int, client: str) -> dict:
    """A fresh server, an XGBoost class model stored: the first answer (module doc, 4.), with
    the model's compiled library on disk (``cached``: a restart) and without it
    (``not_compiled``: the first start after training)."""
    url, text = f"ws://127.0.0.1:{port}/ws", frame("XGBoost", "class")
    aside = folder / "compiled-aside"
    out = {}
    for library in ("cached", "not_compiled"):
        for wait in (0.0, 4.0):
            say(f"  first prediction: library {library}, connecting {wait:g} s after listening")
            if library == "not_compiled" and compiled.exists():
                compiled.rename(aside)
            try:
                out[f"{library}/{wait:g}s"] = first_once(
                    config, folder / f"first-{library}-{wait:g}.log", url, key, text, wait,
                    server_cpu, client_cpu, client)
            finally:
                if library == "not_compiled":
                    shutil.rmtree(compiled, ignore_errors=True)  # what this start compiled
                    if aside.exists():
                        aside.rename(compiled)
    return out


def first_once(config: Path, log_path: Path, url: str, key: str, text: str, wait: float,
               server_cpu: int, client_cpu: int, client: str) -> dict:
    probe = subprocess.Popen(
        [*taskset(client_cpu), sys.executable, str(HERE / "loadgen.py"), "first", url, key,
         text, "--wait", str(wait), "--client", client],
        stdout=subprocess.PIPE, text=True)
    try:
        if not probe.stdout or not probe.stdout.readline():  # its imports done, it polls
            sys.exit("the first-prediction client failed to start")
        with open(log_path, "wb") as log:
            spawned = time.time()
            server = subprocess.Popen(
                [*taskset(server_cpu), NEMBER, "--config", str(config), "serve"],
                stdout=log, stderr=log)
        try:
            line = probe.stdout.readline()
            if probe.wait(120) or not line:
                sys.exit(f"the first-prediction client failed; the server's log:\n"
                         f"{log_path.read_text()[-2000:]}")
            result = json.loads(line)
            deadline = time.monotonic() + 60  # the warm-up may end after the answer
            while time.monotonic() < deadline and not any(
                    e.get("event") == "families.warmed" for e in log_events(log_path)):
                time.sleep(0.1)
        finally:
            server.terminate()
            server.wait(30)
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait()
    events = log_events(log_path)
    listening = next(e["at"] for e in events if e.get("event") == "server.listening")
    warmed = next((e for e in events if e.get("event") == "families.warmed"), None)
    loaded = loaded_events(events, "XGBoost/class")
    result["start_to_listening_ms"] = (result["listening_at"] - spawned) * 1000
    if warmed:
        result["warmed_after_listening_s"] = warmed["at"] - listening
        result["warm_up_seconds"] = warmed.get("seconds")
    compiling = next((e for e in events if e.get("event") == "compiler.started"), None)
    if compiling:
        result["compile_started_after_listening_s"] = compiling["at"] - listening
    if loaded:
        result["loaded_after_listening_s"] = loaded[0]["at"] - listening
        result["loaded_native"] = loaded[0].get("native")
        result["loaded_predict_us"] = loaded[0].get("predict_us")
    return result


def main_pinned(args: argparse.Namespace, families: list[str]) -> None:
    started = time.monotonic()
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    if args.workers != 1:
        sys.exit("--pin measures one server process on one core: --workers 1")
    server_cpu, client_cpu = pin_cpus()
    QUIET["nice"] = args.nice
    client = args.client or ("picows" if find_spec("picows") else "aiohttp")
    if client == "aiohttp":
        say("the load generator is aiohttp (picows is not installed): at 64 connections it "
            "may limit the floor's throughput rather than measure it")
    LOADGEN["prefix"], LOADGEN["client"] = taskset(client_cpu), client
    first_wanted = not args.no_first_prediction
    say(f"--pin: server and floor on CPU {server_cpu}, load generator ({client}) on CPU "
        f"{client_cpu}; load average {' '.join(loadavg)}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port, echo_port = free_port(), free_port()
        config = write_config(folder, port, args, "info")  # info: model.loaded, native=...
        say("preparing (training every family)...")
        key, costs = asyncio.run(prepare(config, folder, families, not args.no_compile,
                                         ("XGBoost",) if first_wanted else ()))
        # The server starts without the libraries compiled here: its first seconds per model
        # are measured on the NumPy and library paths, while it compiles them itself.
        compiled, prepared = folder / "data" / "compiled", folder / "compiled-prepared"
        if compiled.exists():
            compiled.rename(prepared)
        os.sched_setaffinity(0, {client_cpu})  # this script, from now on mostly waiting
        trees = [name for name, cost in costs.items() if cost.get("native")]
        log_path = folder / "server.log"
        echo = subprocess.Popen([*taskset(server_cpu), sys.executable,
                                 str(HERE / "echo_server.py"), str(echo_port),
                                 *(["uvloop"] if args.event_loop == "uvloop" else [])])
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [*taskset(server_cpu), NEMBER, "--config", str(config), "serve"],
                stdout=log, stderr=log)
        try:
            wait_listening(echo_port, echo)
            wait_listening(port, server)
            QUIET.update(pids=[server.pid, echo.pid], cores=(server_cpu, client_cpu),
                         wait=args.quiet_wait)
            echo_url, url = f"ws://127.0.0.1:{echo_port}/ws", f"ws://127.0.0.1:{port}/ws"
            before = before_native(url, key, trees, server.pid)
            say("  waiting until every tree model answers on native code")
            waited = time.monotonic()
            switched = wait_native(log_path, trees, server)
            compile_wait = time.monotonic() - waited
            for name, entry in before.items():
                entry["native_at"] = switched[name]
                entry["native_after_s"] = switched[name] - entry["first_request_at"]
                for phase in ("sequential", "64"):  # did the switch come before it ended?
                    entry[phase]["native_before_end"] = (
                        switched[name] < entry[phase]["cpu"]["window"][1])
            results = {"floor": measure_pinned(echo_url, key, FLOOR_FRAME, args.seconds,
                                               "echo floor", echo.pid, repeats=args.repeats)}
            for family in families:
                for model_type in ("class", "reg"):
                    results[f"{family}/{model_type}"] = measure_pinned(
                        url, key, frame(family, model_type), args.seconds,
                        f"{family} {model_type}", server.pid, echo_url, echo.pid,
                        args.repeats)
            accepts: dict = {}
            if client == "picows":
                say("  measuring accepts (64 bots reconnecting at once): the floor, then Nember")
                storm = ("--connections", "64", "--seconds", str(args.seconds))
                floor_storms, storms = [], []
                for _ in range(args.repeats):
                    floor_storms.append(pinned_phase("accepts", echo_url, key, *storm,
                                                     pid=echo.pid))
                    storms.append(pinned_phase("accepts", url, key, *storm, pid=server.pid))
                accepts = {**median_of(storms), "floor": median_of(floor_storms)}
            counts = [int(c) for c in args.idle.split(",") if c]
            memory = idle_memory(url, key, server.pid, counts) if counts else {}
            memory_echo = {"0": rss_mib(echo.pid)}
        finally:
            for process in (server, echo):
                process.terminate()
                process.wait(30)
        first = {}
        if first_wanted:
            compiled.mkdir(parents=True, exist_ok=True)
            for library in prepared.glob("*") if prepared.exists() else ():
                if not (compiled / library.name).exists():  # compiled here, not by the server
                    shutil.copy2(library, compiled / library.name)
            first = first_prediction(config, compiled, folder, port, key, server_cpu,
                                     client_cpu, client)

    report = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform(), "loadavg_at_start": loadavg},
        "seconds_per_level": args.seconds, "workers": args.workers, "results": results,
        "in_process": costs,
        "memory_mib": memory, "echo_memory_mib": memory_echo,
        "pinned": {
            "server_cpu": server_cpu, "client_cpu": client_cpu, "client": client,
            "nice": args.nice, "repeats": args.repeats,
            "headline": headline(results), "before_native": before,
            "compile_wait_seconds": compile_wait, "first_prediction": first,
            "accepts": accepts,
            "targets": {"cpu": CPU_TARGET, "p50": P50_TARGET, "p99": P99_TARGET,
                        "throughput_64": THROUGHPUT_TARGET, "accepts": ACCEPTS_TARGET},
        },
        "took_seconds": round(time.monotonic() - started, 1),
    }
    report["ratios"] = ratios(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(render_pinned(report))
    print("\nDetails (the unpinned mode's tables, from this pinned run)")
    print(render(report))
    print(f"\n(written to {args.json}; the whole run took {report['took_seconds']} s)")


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


NOISY = 0.15  # other work on either core, over a phase, that marks it as noisy


def _noise(result: dict) -> float:
    cpu = result["cpu"]
    return max(cpu.get("server_core_other_busy", 0.0), cpu.get("client_core_other_busy", 0.0))


def render_pinned(report: dict) -> str:
    pinned, results = report["pinned"], report["results"]
    rows = pinned["headline"]
    loadavg = " ".join(report["machine"]["loadavg_at_start"])
    lines = [
        "",
        f"HEADLINE (--pin): Nember and the echo floor on CPU {pinned['server_cpu']}, the load "
        f"generator ({pinned['client']}) on CPU {pinned['client_cpu']}"
        + (f", all at nice {pinned['nice']}" if pinned["nice"] else "")
        + f"; load average at the start {loadavg}",
        "Each ratio is Nember ÷ the floor measured right before that model"
        + (f"; each figure the median of {pinned['repeats']} windows, the model's and the "
           "floor's in turn." if pinned.get("repeats", 1) > 1 else "."),
        "",
        f"Server CPU per answer, µs (utime+stime from /proc/PID/stat over the window ÷ answers);"
        f" target ratio <= {CPU_TARGET:g}",
        f"{'':22}{'sequential (1 connection)':>29}{'64 connections':>29}",
        f"{'':22}" + f"{'Nember':>9}{'floor':>7}{'ratio':>8}{'':5}" * 2,
    ]
    for name, row in rows.items():
        ratio, passed = row["ratios"], row["pass"]
        lines.append(
            f"{name:<22}"
            f"{row['cpu_us_sequential']:>9.1f}{row['floor_cpu_us_sequential']:>7.1f}"
            f"{ratio['cpu_sequential']:>8.2f} {_verdict(passed['cpu_sequential'])}"
            f"{row['cpu_us_64']:>9.1f}{row['floor_cpu_us_64']:>7.1f}"
            f"{ratio['cpu_64']:>8.2f} {_verdict(passed['cpu_64'])}")
    lines += [
        "",
        f"Latency, one connection, sequential (µs), and predictions/s at 64 connections; "
        f"targets: p50 <= {P50_TARGET:g}, p99 <= {P99_TARGET:g}, "
        f"64-conn >= {THROUGHPUT_TARGET:g} x floor",
        f"{'':22}{'p50':>27}{'p99':>27}{'64 connections /s':>33}",
        f"{'':22}" + f"{'Nember':>8}{'floor':>7}{'ratio':>7}{'':5}" * 2
        + f"{'Nember':>11}{'floor':>10}{'ratio':>7}{'':5}",
    ]
    for name, row in rows.items():
        ratio, passed = row["ratios"], row["pass"]
        lines.append(
            f"{name:<22}"
            f"{row['p50']:>8.0f}{row['floor_p50']:>7.0f}{ratio['p50']:>7.2f} "
            f"{_verdict(passed['p50'])}"
            f"{row['p99']:>8.0f}{row['floor_p99']:>7.0f}{ratio['p99']:>7.2f} "
            f"{_verdict(passed['p99'])}"
            f"{row['per_second_64']:>11,.0f}{row['floor_per_second_64']:>10,.0f}"
            f"{ratio['throughput_64']:>7.2f} {_verdict(passed['throughput_64'])}")
    accepts = pinned.get("accepts")
    if accepts:
        lines += ["", f"Accepts: 64 bots reconnecting at once (connect, key, `Valid API key.` "
                  f"after the durable charge, close), SQLite billing; target >= "
                  f"{ACCEPTS_TARGET:,}/s",
                  f"  {accepts['per_second']:,.0f}/s "
                  f"{_verdict(accepts['per_second'] >= ACCEPTS_TARGET)}"
                  f"; connect to answer p50 {accepts['p50'] / 1000:.1f} ms, p99 "
                  f"{accepts['p99'] / 1000:.1f} ms; server CPU "
                  f"{accepts['cpu']['server_us_per_answer']:,.0f} µs per accept"]
        floor = accepts.get("floor")
        if floor:  # what this machine allows at all: aiohttp's upgrade and close alone
            lines += [f"  the floor (the echo server: upgrade, first frame answered, close): "
                      f"{floor['per_second']:,.0f}/s, server CPU "
                      f"{floor['cpu']['server_us_per_answer']:,.0f} µs per accept; Nember "
                      f"{accepts['per_second'] / floor['per_second']:.2f}x its rate"]
    lines += ["", "Verdict per model (all five: CPU sequential and 64-conn, p50, p99, 64-conn "
              "throughput)"]
    for name, row in rows.items():
        failed = [k for k, ok in row["pass"].items() if not ok]
        noisy = [phase for phase in ("floor_sequential", "floor_64", "sequential", "64")
                 if _noise(results[name][phase]) > NOISY]
        lines.append(f"  {name:<22}{_verdict(row['all_pass'])}"
                     + (f"  (failed: {', '.join(failed)})" if failed else "")
                     + (f"  [noisy: other work on the cores during {', '.join(noisy)}]"
                        if noisy else ""))
    lines += ["", "Cores at 64 connections, % of one core over the window: the server, the "
              "load generator, and anything else on",
              "the server's core / the load generator's core (other people's work: noise unless "
              "near 0)",
              f"{'':22}{'Nember: server':>15}{'client':>8}{'other S/C':>12}"
              f"{'floor: server':>16}{'client':>8}{'other S/C':>12}"]

    def cores(cpu: dict) -> str:
        other = (f"{cpu.get('server_core_other_busy', 0) * 100:.0f}/"
                 f"{cpu.get('client_core_other_busy', 0) * 100:.0f}%")
        return f"{cpu['server_busy'] * 100:.0f}%", f"{cpu['client_busy'] * 100:.0f}%", other

    for name, result in results.items():
        if name == "floor":
            continue
        ours, floor = cores(result["64"]["cpu"]), cores(result["floor_64"]["cpu"])
        lines.append(f"{name:<22}{ours[0]:>15}{ours[1]:>8}{ours[2]:>12}"
                     f"{floor[0]:>16}{floor[1]:>8}{floor[2]:>12}")
    before = pinned["before_native"]
    if before:
        lines += [
            "",
            "Before native code: each tree model's first seconds on a server that has not "
            "compiled it yet (NumPy or library path;",
            "its compile runs at nice 19 on the server's core meanwhile); first request at 0",
            f"{'':22}{'64-conn/s':>10}{'p50':>7}{'p99':>7}{'CPU µs':>8}"
            f"{'seq p50':>9}{'p99':>7}{'CPU µs':>8}{'native after':>14}",
        ]
        for name, entry in before.items():
            seq, conc = entry["sequential"], entry["64"]
            marks = ["*" if phase["native_before_end"] else " " for phase in (conc, seq)]
            lines.append(
                f"{name:<22}{conc['per_second']:>10,.0f}{conc['p50']:>7.0f}{conc['p99']:>7.0f}"
                f"{conc['cpu']['server_us_per_answer']:>7.1f}{marks[0]}"
                f"{seq['p50']:>9.0f}{seq['p99']:>7.0f}"
                f"{seq['cpu']['server_us_per_answer']:>7.1f}{marks[1]}"
                f"{entry['native_after_s']:>13.1f}s")
        lines += ["* native code came before that phase ended: its figures mix both paths",
                  f"After the phases, the compiles needed {pinned['compile_wait_seconds']:.1f} s "
                  "more; everything in the headline ran on native code."]
    first = pinned["first_prediction"]
    if first:
        columns = [("cached", "library cached (restart)"),
                   ("not_compiled", "not compiled yet (first start)")]
        lines += ["", f"First prediction after a fresh `nember serve` (XGBoost class; server "
                  f"on CPU {pinned['server_cpu']}, client on CPU {pinned['client_cpu']}), ms",
                  f"{'':46}" + "".join(f"{title:>32}" for _, title in columns)]

        def row(label: str, at: str, key: str, scale: float = 1.0, fmt: str = ".1f") -> None:
            cells = []
            for library, _ in columns:
                value = first.get(f"{library}/{at}", {}).get(key)
                cells.append(f"{value * scale:>32{fmt}}" if value is not None else f"{'-':>32}")
            lines.append(f"{label:<46}" + "".join(cells))

        row("process start -> port accepting", "0s", "start_to_listening_ms")
        row("(a) connect at once: listening -> answer", "0s", "from_listening_ms")
        row("      of which connect + authenticate", "0s", "connect_auth_ms")
        row("      of which the first round trip", "0s", "first_round_trip_ms")
        row("      server: model.loaded, after listening", "0s", "loaded_after_listening_s",
            1000)
        row("      server: families.warmed, after listening", "0s", "warmed_after_listening_s",
            1000)
        row("      the next 20 round trips: median", "0s", "next_median_us", 0.001, ".3f")
        row("      the next 20 round trips: max", "0s", "next_max_us", 0.001, ".3f")
        row("(b) 4 s after listening: connect -> answer", "4s", "from_connect_ms")
        row("      of which the first round trip", "4s", "first_round_trip_ms")
        row("      server: families.warmed, after listening", "4s", "warmed_after_listening_s",
            1000)
        row("      the next 20 round trips: median", "4s", "next_median_us", 0.001, ".3f")
        row("      the next 20 round trips: max", "4s", "next_max_us", 0.001, ".3f")
        row("      server: compiler.started, after listening", "4s",
            "compile_started_after_listening_s", 1000)
        natives = {library: first.get(f"{library}/0s", {}).get("loaded_native")
                   for library, _ in columns}
        lines.append("first load on native code: " + ", ".join(
            f"{library} {'yes' if native else 'no'}" for library, native in natives.items()))
    return "\n".join(lines)


def ratios(report: dict) -> dict:
    floor = report["results"]["floor"]
    out = {}
    for name, result in report["results"].items():
        if name == "floor":
            continue
        predict = report["in_process"][name]["predict_us"]
        seq = result["sequential"]
        paired = result.get("floor_sequential", floor["sequential"])
        out[name] = {
            "p50_vs_floor_plus_predict": seq["p50"] / (paired["p50"] + predict),
            "p99_vs_floor": seq["p99"] / paired["p99"],
            "throughput_64_vs_floor": result["64"]["per_second"] / floor["64"]["per_second"],
        }
    memory = report["memory_mib"]
    if "10000" in memory:
        out["rss_growth_10000_idle_mib"] = memory["10000"] - memory["0"]
    return out


def render(report: dict) -> str:
    results, costs, ratio = report["results"], report["in_process"], report["ratios"]
    lines = ["", "One connection, sequential round trips (µs); throughput in predictions/s",
             f"{'':22}{'p50':>7}{'p90':>7}{'p99':>7}{'p99.9':>8}{'max':>8}"
             + "".join(f"{f'{n} conn/s':>13}{'p50':>7}{'p99':>7}" for n in LEVELS)]
    for name, result in results.items():
        seq = result["sequential"]
        row = (f"{name:<22}{seq['p50']:>7.0f}{seq['p90']:>7.0f}{seq['p99']:>7.0f}"
               f"{seq['p999']:>8.0f}{seq['max']:>8.0f}")
        for level in LEVELS:
            r = result[str(level)]
            row += f"{r['per_second']:>13,.0f}{r['p50']:>7.0f}{r['p99']:>7.0f}"
        lines.append(row)
    lines += ["", "Targets: p50 <= 1.5 x (floor p50 + predict); p99 <= 2 x floor p99 (the floor's "
              "sequential run just before each family's);",
              "64-connection throughput >= 0.5 x floor",
              f"{'':22}{'compiled':>9}{'predict µs':>11}{'frame µs':>10}{'floor p50':>10}"
              f"{'p50 ratio':>11}{'p99 ratio':>11}{'64-conn ratio':>15}"]
    for name, cost in costs.items():
        r = ratio[name]
        marks = [r["p50_vs_floor_plus_predict"] <= 1.5, r["p99_vs_floor"] <= 2.0,
                 r["throughput_64_vs_floor"] >= 0.5]
        paired = results[name].get("floor_sequential", results["floor"]["sequential"])
        lines.append(
            f"{name:<22}{'yes' if cost.get('native') else 'no':>9}{cost['predict_us']:>11.2f}"
            f"{cost['frame_us']:>10.2f}{paired['p50']:>10.0f}"
            f"{r['p50_vs_floor_plus_predict']:>10.2f}{'✓' if marks[0] else '✗'}"
            f"{r['p99_vs_floor']:>10.2f}{'✓' if marks[1] else '✗'}"
            f"{r['throughput_64_vs_floor']:>14.2f}{'✓' if marks[2] else '✗'}")
    lines += ["", "Opt-in answers (PROTOCOL §7), in-process µs per frame",
              f"{'':22}{'plain':>9}{'details':>9}{'probabilities':>15}"]
    for name, cost in costs.items():
        proba = cost.get("frame_probabilities_us")
        lines.append(f"{name:<22}{cost['frame_us']:>9.2f}{cost['frame_details_us']:>9.2f}"
                     + (f"{proba:>15.2f}" if proba is not None else f"{'-':>15}"))
    memory = report["memory_mib"]
    if memory:
        counts = [k for k in memory if k.isdigit()]
        lines += ["", "Server memory (RSS, MiB) with idle authenticated connections: "
                  + ", ".join(f"{int(k):,}: {memory[k]:.0f}" for k in counts)]
        if "rss_growth_10000_idle_mib" in ratio:
            growth = ratio["rss_growth_10000_idle_mib"]
            lines.append(f"growth for 10,000: {growth:.0f} MiB "
                         f"({growth * 1024 / 10000:.1f} KiB each; target < 1 GiB "
                         f"{'✓' if growth < 1024 else '✗'})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
