"""Round-trip latency of one prediction over loopback, sequential, one connection.

Self-contained: makes a throw-away data folder, an account and key, trains the requested
families on the demo's sample series, starts `nember serve`, measures, and stops it.

    .venv/bin/python benchmarks/latency.py [--requests 5000] [--families DecisionTree,XGBoost]

Prints p50/p90/p99/max per family and type (microseconds) and the sequential throughput.
This is the rough measurement for the serving core; the full benchmark (concurrency, memory,
the echo-server floor) is issue #4's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

NEMBER = str(Path(sys.executable).with_name("nember"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(config: Path, *args: str) -> str:
    env = {**os.environ, "NEMBER_PASSWORD": "benchmark-password"}
    result = subprocess.run(
        [NEMBER, "--config", str(config), *args], capture_output=True, text=True, env=env
    )
    if result.returncode:
        sys.exit(result.stderr)
    return result.stdout


async def measure(url: str, key: str, family: str, model_type: str, n: int) -> dict:
    frame = orjson.dumps({
        "strat_name": "bench", "model_name": family, "model_type": model_type,
        "DataPoints": [{"point1": 3.1, "point2": -2.0}, {"point1": 1.2, "point2": 0.4}],
    }).decode()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, compress=0) as ws:
            await ws.send_str(key)
            await ws.receive_str()
            for _ in range(min(500, n)):  # warm-up: model load, caches
                await ws.send_str(frame)
                await ws.receive_str()
            times = []
            started = time.perf_counter()
            for _ in range(n):
                t0 = time.perf_counter_ns()
                await ws.send_str(frame)
                answer = await ws.receive_str()
                times.append(time.perf_counter_ns() - t0)
            elapsed = time.perf_counter() - started
            assert '"success"' in answer, answer
    times.sort()

    def pct(p: float) -> float:
        return times[min(len(times) - 1, int(p * len(times)))] / 1000

    return {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": times[-1] / 1000,
            "per_s": n / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--families", default="DecisionTree,RandomForest,XGBoost,LightGBM")
    args = parser.parse_args()
    families = args.families.split(",")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = folder / "nember.yaml"
        port = free_port()
        # The per-connection rate limit would cap a tight loop at 1,000/s: lift it here.
        config.write_text(
            f"data_dir: data\nlog: {{level: warning}}\nserver:\n  port: {port}\n"
            "  rate_limit: {per_second: 10000000, burst: 10000000}\n"
        )
        from nember_core.demo import write_prices

        write_prices(folder / "prices.csv")
        cli(config, "accounts", "create", "bench@example.com")
        key = cli(config, "keys", "create", "--account", "bench@example.com").split()[-1]
        for family in families:
            for model_type, target in (("class", "direction"), ("reg", "next_return")):
                cli(config, "train", "--account", "bench@example.com", "--strat", "bench",
                    "--model", family, "--type", model_type, "--data", str(folder / "prices.csv"),
                    "--target", target, "--window", "2", "--features", "point1,point2")
        server = subprocess.Popen([NEMBER, "--config", str(config), "serve"])
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            url = f"ws://127.0.0.1:{port}/ws"
            print(f"{'family':<18}{'type':<6}{'p50 µs':>9}{'p90 µs':>9}{'p99 µs':>9}"
                  f"{'max µs':>10}{'req/s':>9}")
            for family in families:
                for model_type in ("class", "reg"):
                    r = asyncio.run(measure(url, key, family, model_type, args.requests))
                    print(f"{family:<18}{model_type:<6}{r['p50']:>9.0f}{r['p90']:>9.0f}"
                          f"{r['p99']:>9.0f}{r['max']:>10.0f}{r['per_s']:>9.0f}")
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
