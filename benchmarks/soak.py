"""A soak: a server under a long, mixed, hostile load, watched for loss and growth.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--connections 64] [--json FILE]

It starts `nember serve` on a throw-away data folder with a trained model and, for the given
time, keeps C connections asking for predictions while a tenth of their frames are malformed;
every 30 s half of them drop and reconnect at once (a reconnect storm); every minute a new key
is made, used by 4 connections and revoked (they must close with 4401), and a model is trained
through the REST API. Every 10 s it samples the memory (RSS) of the server and its training
processes, and the server's open file descriptors. It prints, per minute, p50/p99 of the round
trips, predictions, errors and reconnections, with the memory and descriptors; and at the end
checks that nothing was lost:
every answer carried the right seq_num, every accepted connection was charged exactly once,
and every connection's usage was closed after the server stopped. With matplotlib installed
(`pip install matplotlib`) it also draws memory and descriptors over time into a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from benchmarks.run import free_port, rss_mib, wait_listening  # noqa: E402

NEMBER = str(Path(sys.executable).with_name("nember"))
EMAIL = "soak@example.com"
GOOD = json.dumps({"strat_name": "soak", "model_name": "DecisionTree", "model_type": "class",
                   "DataPoints": [{"point1": 3.1, "point2": -2.0},
                                  {"point1": 1.2, "point2": 0.4}]})
BAD = ["{not json", "[1, 2]", json.dumps({"strat_name": "soak"}),
       GOOD.replace("3.1", '"3.1"'), GOOD.replace("soak", "x" * 500),
       GOOD.replace('"class"', '"both"'), "", "null"]


class Tally:
    """What the load generator saw, per minute and in all."""

    def __init__(self):
        self.started = time.monotonic()
        self.minutes: dict[int, dict] = {}
        self.accepted = 0  # connections that heard "Valid API key."
        self.revoked_closes = 0
        self.wrong_seq = 0
        self.jobs = {"succeeded": 0, "failed": 0}

    def minute(self) -> dict:
        index = int((time.monotonic() - self.started) // 60)
        return self.minutes.setdefault(index, {"latencies": [], "predictions": 0,
                                               "errors": 0, "reconnects": 0})


async def _connect(session, url: str, key: str, tally: Tally):
    ws = await session.ws_connect(url, compress=0, max_msg_size=0)
    await ws.send_str(key)
    answer = json.loads((await ws.receive(timeout=30)).data)
    if answer.get("status") != "success":
        raise RuntimeError(f"refused: {answer}")
    tally.accepted += 1
    return ws


async def _bot(session, url: str, key: str, tally: Tally, stop: asyncio.Event,
               storm: asyncio.Event) -> None:
    rng = random.Random()
    while not stop.is_set():
        ws = await _connect(session, url, key, tally)
        seq = 0
        try:
            while not stop.is_set() and not storm.is_set():
                bad = rng.random() < 0.1
                started = time.perf_counter_ns()
                await ws.send_str(rng.choice(BAD) if bad else GOOD)
                answer = json.loads((await ws.receive(timeout=30)).data)
                elapsed = time.perf_counter_ns() - started
                seq += 1
                minute = tally.minute()
                if answer.get("seq_num") != seq:
                    tally.wrong_seq += 1
                if answer["type"] == "success":
                    minute["predictions"] += 1
                    minute["latencies"].append(elapsed)
                else:
                    minute["errors"] += 1
                await asyncio.sleep(rng.uniform(0.005, 0.02))  # a bot on a tick
        finally:
            await ws.close()
        if storm.is_set():
            tally.minute()["reconnects"] += 1
            await asyncio.sleep(rng.uniform(0, 0.5))


async def _every_minute(session, base: str, url: str, manage: str, data: bytes, tally: Tally,
                        stop: asyncio.Event) -> None:
    """A key made, used by 4 connections, revoked; and a model trained through the API."""
    headers = {"Authorization": f"Bearer {manage}"}
    n = 0
    while not stop.is_set():
        n += 1
        async with session.post(f"{base}/api/keys", json={"name": f"short-{n}"},
                                headers=headers) as response:
            key = await response.json()
        sockets = [await _connect(session, url, key["key"], tally) for _ in range(4)]
        async with session.delete(f"{base}/api/keys/{key['id']}", headers=headers):
            pass
        for ws in sockets:
            closing = await ws.receive(timeout=30)
            tally.revoked_closes += closing.data == 4401
        form = aiohttp.FormData()
        form.add_field("data", data, filename="prices.csv", content_type="text/csv")
        for name, value in {"strat": f"soak-{n}", "model": "DecisionTree", "type": "class",
                            "target": "direction", "window": "2"}.items():
            form.add_field(name, value)
        async with session.post(f"{base}/api/models", data=form, headers=headers) as response:
            job = await response.json()
        while job["state"] in ("queued", "running"):
            await asyncio.sleep(0.5)
            async with session.get(f"{base}/api/jobs/{job['id']}", headers=headers) as response:
                job = await response.json()
        tally.jobs[job["state"]] += 1
        try:
            await asyncio.wait_for(stop.wait(), 60)
        except asyncio.TimeoutError:
            pass


async def _storms(storm: asyncio.Event, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 30)
        except asyncio.TimeoutError:
            storm.set()
            await asyncio.sleep(1)
            storm.clear()


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _sample(pid: int, samples: list, stop: asyncio.Event, started: float) -> None:
    while not stop.is_set():
        samples.append((round(time.monotonic() - started), rss_mib(pid), _descriptors(pid)))
        try:
            await asyncio.wait_for(stop.wait(), 10)
        except asyncio.TimeoutError:
            pass


async def soak(url: str, base: str, key: str, manage: str, data: bytes, pid: int,
               minutes: float, connections: int) -> tuple[Tally, list]:
    tally, samples, stop, storm = Tally(), [], asyncio.Event(), asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        tasks = [asyncio.create_task(_bot(session, url, key, tally, stop, storm))
                 for _ in range(connections)]
        tasks += [asyncio.create_task(_every_minute(session, base, url, manage, data, tally,
                                                    stop)),
                  asyncio.create_task(_storms(storm, stop)),
                  asyncio.create_task(_sample(pid, samples, stop, tally.started))]
        await asyncio.sleep(minutes * 60)
        stop.set()
        await asyncio.gather(*tasks)
    return tally, samples


def _percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000 if ordered else 0.0


def _cli(config: Path, *args: str) -> str:
    env = {**os.environ, "NEMBER_PASSWORD": "soak-password"}
    return subprocess.run([NEMBER, "--config", str(config), *args], check=True, env=env,
                          capture_output=True, text=True).stdout


def _plot(samples: list, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    seconds = [s[0] / 60 for s in samples]
    figure, memory = plt.subplots(figsize=(8, 3.2))
    memory.plot(seconds, [s[1] for s in samples], color="tab:blue")
    memory.set_xlabel("minutes")
    memory.set_ylabel("server RSS (MiB)", color="tab:blue")
    memory.set_ylim(bottom=0)
    descriptors = memory.twinx()
    descriptors.plot(seconds, [s[2] for s in samples], color="tab:orange")
    descriptors.set_ylabel("open file descriptors", color="tab:orange")
    descriptors.set_ylim(bottom=0)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "soak.json")
    parser.add_argument("--plot", type=Path, default=HERE / "results" / "soak.png")
    args = parser.parse_args()

    from nember_core.app.demo import write_prices

    with tempfile.TemporaryDirectory(prefix="nember-soak-") as folder:
        folder = Path(folder)
        port = free_port()
        config = folder / "nember.yaml"
        config.write_text(f"data_dir: data\nserver: {{port: {port}, "
                          "max_connections_per_account: 10000}\nlog: {level: warning}\n")
        prices = folder / "prices.csv"
        write_prices(prices)
        _cli(config, "accounts", "create", EMAIL)
        key = _cli(config, "keys", "create", "--account", EMAIL).strip().splitlines()[-1]
        manage = _cli(config, "keys", "create", "--account", EMAIL, "--scope",
                      "manage").strip().splitlines()[-1]
        _cli(config, "train", "--account", EMAIL, "--strat", "soak", "--model", "DecisionTree",
             "--type", "class", "--data", str(prices), "--target", "direction", "--window", "2",
             "--features", "point1,point2")
        server = subprocess.Popen([NEMBER, "--config", str(config), "serve"],
                                  stderr=open(folder / "server.log", "wb"))
        try:
            wait_listening(port, server)
            tally, samples = asyncio.run(soak(
                f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{port}", key, manage,
                prices.read_bytes(), server.pid, args.minutes, args.connections))
        finally:
            server.send_signal(signal.SIGTERM)
            code = server.wait(60)
        db = sqlite3.connect(folder / "data" / "billing.sqlite3")
        charges = db.execute("SELECT COUNT(*), COUNT(DISTINCT connection_id) FROM charges")
        charged, distinct = charges.fetchone()
        unclosed = db.execute("SELECT COUNT(*) FROM usage WHERE closed_at IS NULL").fetchone()[0]
        db.close()

    print("minute   p50 µs   p99 µs  predictions  errors  reconnects   RSS MiB   fds")
    by_minute = {int(s[0] // 60): s for s in samples}
    rows = []
    for index, minute in sorted(tally.minutes.items()):
        if index >= args.minutes:
            continue  # the last moments, past the last whole minute
        sample = by_minute.get(index, samples[-1])
        row = {"minute": index + 1, "p50_us": _percentile(minute["latencies"], 0.5),
               "p99_us": _percentile(minute["latencies"], 0.99),
               "predictions": minute["predictions"], "errors": minute["errors"],
               "reconnects": minute["reconnects"], "rss_mib": round(sample[1], 1),
               "fds": sample[2]}
        rows.append(row)
        print(f"{row['minute']:>6} {row['p50_us']:>8.0f} {row['p99_us']:>8.0f} "
              f"{row['predictions']:>12,} {row['errors']:>7,} {row['reconnects']:>11} "
              f"{row['rss_mib']:>9.1f} {row['fds']:>5}")
    summary = {
        "accepted_connections": tally.accepted, "charges": charged,
        "distinct_charged_connections": distinct, "usage_rows_left_open": unclosed,
        "answers_with_a_wrong_seq_num": tally.wrong_seq,
        "revoked_connections_closed_4401": tally.revoked_closes, "jobs": tally.jobs,
        "server_exit_code": code,
        "rss_mib_first_last": [round(samples[0][1], 1), round(samples[-1][1], 1)],
        "fds_first_last": [samples[0][2], samples[-1][2]],
    }
    print(json.dumps(summary, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"minutes": rows, "samples": samples, **summary}, indent=2))
    if _plot(samples, args.plot):
        print(f"plot: {args.plot}")
    lost = (charged != tally.accepted or distinct != charged or unclosed or tally.wrong_seq
            or code != 0)
    sys.exit("something was lost: see the summary" if lost else 0)


if __name__ == "__main__":
    main()
