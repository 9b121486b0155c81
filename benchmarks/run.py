"""Nember's benchmark: every family against the floor of this machine, in one run.

    .venv/bin/python benchmarks/run.py [--families DecisionTree,XGBoost] [--seconds 2]
                                       [--idle 1000,10000] [--json benchmarks/results/latest.json]

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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

HERE = Path(__file__).resolve().parent
NEMBER = str(Path(sys.executable).with_name("nember"))
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


def loadgen(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(HERE / "loadgen.py"), *args], capture_output=True, text=True,
        timeout=600,
    )
    if out.returncode:
        sys.exit(f"load generator failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def frame(family: str, model_type: str, **extensions) -> str:
    return orjson.dumps({"strat_name": "bench", "model_name": family, "model_type": model_type,
                         "DataPoints": POINTS, **extensions}).decode()


# --- set-up and in-process costs ---------------------------------------------------------

async def prepare(config: Path, folder: Path, families: list[str],
                  compile_trees: bool) -> tuple[str, dict]:
    """Account, key and models (compiled, as the server will find them); and each model's
    raw and whole-frame cost in-process."""
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
        for family, model_type, target in names:
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
            [sys.executable, str(HERE / "loadgen.py"), "idle", url, key,
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
    parser.add_argument("--json", type=Path, default=HERE / "results" / "latest.json")
    parser.add_argument("--no-batching", action="store_true", help="serve without micro-batching")
    parser.add_argument("--no-compile", action="store_true",
                        help="serve tree models without compiling them to native code")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes sharing the port (nember serve --workers)")
    parser.add_argument("--uvloop", action="store_true",
                        help="run Nember and the echo floor on uvloop")
    args = parser.parse_args()
    families = [f for f in args.families.split(",") if f]
    started = time.monotonic()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port, echo_port = free_port(), free_port()
        config = folder / "nember.yaml"
        config.write_text(
            "data_dir: data\nlog: {level: warning}\ndashboard: {enabled: false}\n"
            f"server:\n  port: {port}\n  max_connections_per_account: 20000\n"
            # a benchmark's tight loop would hit the per-connection rate limit: lift it
            "  rate_limit: {per_second: 100000000, burst: 100000000}\n"
            f"  micro_batching: {'false' if args.no_batching else 'true'}\n"
            f"  event_loop: {'uvloop' if args.uvloop else 'asyncio'}\n"
            f"  compile_trees: {'false' if args.no_compile else 'true'}\n"
            f"  workers: {args.workers}\n"
        )
        say("preparing (training every family)...")
        key, costs = asyncio.run(prepare(config, folder, families, not args.no_compile))

        echo = subprocess.Popen([sys.executable, str(HERE / "echo_server.py"), str(echo_port),
                                 *(["uvloop"] if args.uvloop else [])])
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
