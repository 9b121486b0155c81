"""What the stores cost an accept, without the network: the same calls a connection makes,
from many coroutines at once, in one process on one core.

    .venv/bin/python benchmarks/store_costs.py [--bots 4,16,64] [--work 450] [--rounds 5]
                                               [--seconds 3] [--config nember.yaml]

Each bot loops: look up its API key, admit its connection to the registry, charge it (durable
before the next step, as before ``Valid API key.``), then remove it and record its usage, as
a connection's close does. ``--work`` µs of busy Python per accept, in four pieces between
those steps, stand in for the websocket's own work (a pinned server spends about 450 µs per
accept outside the stores): the stores' threads then compete with a busy event loop for the
GIL, as in a server, and the event loop turns as slowly as a busy server's does, which decides
how much each batch of ``plugin_api.Together`` gathers.

The stores are those of ``--config`` (default: a fresh data folder on the embedded SQLite
ones), opened as ``nember serve`` opens them, on uvloop. The process pins itself to one core.
It prints, per number of bots, the median over the rounds of CPU µs per accept (the whole
process: the loop's thread and the stores' threads), accepts per second, and per thread its
CPU and context switches per accept (from ``/proc/self/task``). Without a network, and with
no load generator sharing the machine, rounds agree within a few percent where accept
storms against a server (``accept_costs.py``, ``run.py --pin``) spread by ±15 %: a change to
a store shows here first, and its effect on a server then needs only a confirming run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import run


def threads() -> dict[int, tuple[int, int]]:
    """Per thread of this process: (CPU clock ticks, context switches) so far."""
    found = {}
    for name in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/self/task/{name}/status") as status:
                switches = sum(int(line.split()[1]) for line in status
                               if "ctxt_switches" in line)
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        found[int(name)] = (int(fields[11]) + int(fields[12]), switches)
    return found


def busy(microseconds: float) -> None:
    end = time.perf_counter() + microseconds / 1e6
    while time.perf_counter() < end:
        pass


async def storm(stores, secret: str, bots: int, seconds: float, work: float) -> int:
    """``bots`` coroutines accepting and closing connections for ``seconds``: how many."""
    from nember_core.credentials import new_id
    from nember_core.records import LiveConnection, utcnow

    accepted = 0
    piece = work / 4
    stop = time.perf_counter() + seconds

    async def closed(code: int, reason: str) -> None:
        return None

    async def bot() -> None:
        nonlocal accepted
        while time.perf_counter() < stop:
            busy(piece)
            await asyncio.sleep(0)
            key = await stores.key_store.authenticate(secret)
            busy(piece)
            conn = LiveConnection(id=new_id("conn"), account_id=key.account_id, key_id=key.id,
                                  key_name=key.name, remote="127.0.0.1", node=stores.node,
                                  opened_at=utcnow())
            if not await stores.registry.add(conn, 1_000_000, closed):
                raise SystemExit("the registry refused a connection under a limit of 1,000,000")
            await stores.billing.charge(conn.usage(), Decimal("0.001"), "USD")
            busy(piece)
            await asyncio.sleep(0)
            busy(piece)
            await stores.registry.remove(conn)
            usage = conn.usage()
            usage.closed_at, usage.close_code, usage.close_reason = utcnow(), 1000, "normal"
            await stores.billing.record_usage(usage)
            accepted += 1

    await asyncio.gather(*(bot() for _ in range(bots)))
    return accepted


async def measure(config: Path, bots_list: list[int], args: argparse.Namespace) -> str:
    from nember_core.app.logs import configure
    from nember_core.app.nember import Nember
    from nember_core.services import Services

    nember = Nember.load(str(config))
    configure("warning")
    stores = await nember.open()
    lines = [f"Stores alone, {args.work:g} µs of busy Python per accept; medians of "
             f"{args.rounds} rounds of {args.seconds:g} s",
             f"{'bots':>5}{'CPU µs/accept':>15}{'accepts/s':>11}   per thread: CPU µs and "
             "switches per accept (the loop's first)"]
    try:
        services = Services(nember.config, nember.families, stores)
        account = await services.accounts.create(f"store-costs-{os.getpid()}@example.com",
                                                 "benchmark-password")
        secret = (await services.keys.create(account.id, "store costs")).secret
        me = os.getpid()
        tick = 1e6 / os.sysconf("SC_CLK_TCK")
        for bots in bots_list:
            await storm(stores, secret, bots, 1.0, args.work)  # warm-up
            before, cpu, rates, total = threads(), [], [], 0
            for _ in range(args.rounds):
                started, began = time.process_time(), time.perf_counter()
                accepted = await storm(stores, secret, bots, args.seconds, args.work)
                cpu.append((time.process_time() - started) / accepted * 1e6)
                rates.append(accepted / (time.perf_counter() - began))
                total += accepted
            after = threads()
            parts = []
            for tid in sorted(after, key=lambda t: (t != me, t)):
                then = before.get(tid, (0, 0))
                ticks, switches = after[tid][0] - then[0], after[tid][1] - then[1]
                if ticks or switches:
                    parts.append(f"{ticks * tick / total:.0f}/{switches / total:.2f}")
            lines.append(f"{bots:>5}{statistics.median(cpu):>15,.0f}"
                         f"{statistics.median(rates):>11,.0f}   {'  '.join(parts)}")
    finally:
        await stores.close()
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bots", default="4,16,64", help="concurrent accepts, comma-separated")
    parser.add_argument("--work", type=float, default=450.0,
                        help="µs of busy Python per accept, standing in for the websocket")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--config", type=Path, help="default: the embedded SQLite stores")
    args = parser.parse_args()
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # as a server without it
        runner = asyncio.run
    with tempfile.TemporaryDirectory() as folder:
        config = args.config
        if config is None:
            settings = argparse.Namespace(no_batching=False, event_loop="uvloop",
                                          no_compile=False, workers=1)
            config = run.write_config(Path(folder), run.free_port(), settings, "warning")
            os.chdir(folder)  # its data_dir is relative
        bots = [int(n) for n in args.bots.split(",")]
        print(runner(measure(config.resolve(), bots, args)))


if __name__ == "__main__":
    sys.exit(main())
