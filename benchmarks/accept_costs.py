"""Where an accept's server CPU goes: which store's work at connect and close costs what.

    .venv/bin/python benchmarks/accept_costs.py [--rounds 6] [--seconds 2] [--nice -10]

Servers on CPU 1, the load generator (picows) on CPU 0, as in `run.py --pin`: the echo floor
(benchmarks/echo_server.py), Nember on its embedded stores, and Nember with one part of an
accept left out in each of the others: the key store's look-up (each key looked up once, then
answered from memory), the billing ledger's charge and usage record, the connection registry's
admission and removal, and the `connection.open`/`connection.close` log lines (level warning).
Every server starts at once on one data folder; each round storms each of them in turn (64
bots connecting, authenticating and closing for --seconds, `loadgen.py accepts`), so that the
machine's drifts in speed, ±30 % within minutes here, hit every variant alike. It prints the
medians over the rounds: accepts per second, server CPU µs per accept, and how much less CPU
each variant took than Nember: what that part costs, its trips to SQLite's threads and the
callbacks around them included. The variants are a measurement, never a way to serve: an
accept without its key look-up, charge or registry entry would break the protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import run

# What each variant leaves out (see ``serve``); Nember itself leaves out nothing.
VARIANTS = {"Nember": "", "no key look-up": "keys", "no billing": "billing",
            "no registry": "registry", "no connection logs": "logs"}


def serve(config: str, leave_out: str) -> None:
    """``nember serve`` with ``leave_out``'s accept-time calls answered from memory."""
    from nember_core.app.cli import main
    from nember_core.serving import gateway

    made = gateway.Gateway.__init__

    def without(self, config, stores, cache) -> None:
        made(self, config, stores, cache)
        if leave_out == "keys":
            real, known = stores.key_store.authenticate, {}

            async def authenticate(secret):
                if secret not in known:
                    known[secret] = await real(secret)
                return known[secret]
            stores.key_store.authenticate = authenticate
        elif leave_out == "billing":
            async def nothing(*_):
                return None
            stores.billing.charge = stores.billing.record_usage = nothing
        elif leave_out == "registry":
            async def admitted(*_):
                return True

            async def removed(*_):
                return None
            stores.registry.add, stores.registry.remove = admitted, removed

    gateway.Gateway.__init__ = without
    sys.argv = ["nember", "--config", config, "serve"]
    main()


async def make_key(config: Path) -> str:
    from nember_core.app.logs import configure
    from nember_core.app.nember import Nember
    from nember_core.services import Services

    nember = Nember.load(str(config))
    configure("warning")
    stores = await nember.open()
    try:
        services = Services(nember.config, nember.families, stores)
        account = await services.accounts.create("bench@example.com", "benchmark-pw")
        return (await services.keys.create(account.id, "bench")).secret
    finally:
        await stores.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--nice", type=int, default=0, help="the servers' niceness (-10: root)")
    parser.add_argument("--quiet-wait", type=float, default=3.0,
                        help="seconds to wait, before each storm, for the machine to be idle")
    args = parser.parse_args()
    server_cpu, client_cpu = run.pin_cpus()
    run.QUIET["nice"] = args.nice
    run.LOADGEN["prefix"], run.LOADGEN["client"] = run.taskset(client_cpu), "picows"
    settings = argparse.Namespace(no_batching=False, event_loop=run.DEFAULT_LOOP,
                                  no_compile=False, workers=1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        configs: dict[str, tuple[Path, int]] = {}  # each variant's config file and port
        for name, leave_out in VARIANTS.items():
            port = run.free_port()
            config = run.write_config(folder, port, settings,
                                      "warning" if leave_out == "logs" else "info")
            configs[name] = (config.rename(folder / f"{leave_out or 'everything'}.yaml"), port)
        key = asyncio.run(make_key(configs["Nember"][0]))
        os.sched_setaffinity(0, {client_cpu})
        echo_port = run.free_port()
        servers = {"floor": (subprocess.Popen(
            [*run.taskset(server_cpu), sys.executable, str(run.HERE / "echo_server.py"),
             str(echo_port), *(["uvloop"] if run.DEFAULT_LOOP == "uvloop" else [])]),
            echo_port)}
        with open(folder / "servers.log", "wb") as log:
            for name, (config, port) in configs.items():
                servers[name] = (subprocess.Popen(
                    [*run.taskset(server_cpu), sys.executable, __file__, "serve", str(config),
                     VARIANTS[name]], stdout=log, stderr=log, cwd=folder), port)
        try:
            for process, port in servers.values():
                run.wait_listening(port, process)
            run.QUIET.update(pids=[p.pid for p, _ in servers.values()],
                             cores=(server_cpu, client_cpu), wait=args.quiet_wait)
            results: dict[str, list[dict]] = {name: [] for name in servers}
            for number in range(1, args.rounds + 1):
                run.say(f"round {number} of {args.rounds}")
                for name, (process, port) in servers.items():
                    results[name].append(run.pinned_phase(
                        "accepts", f"ws://127.0.0.1:{port}/ws", key, "--connections", "64",
                        "--seconds", str(args.seconds), pid=process.pid))
        finally:
            for process, _ in servers.values():
                process.terminate()
            for process, _ in servers.values():
                process.wait(timeout=30)
    print(render(results, args))


def render(results: dict[str, list[dict]], args: argparse.Namespace) -> str:
    def median(name: str, field) -> float:
        return statistics.median(field(result) for result in results[name])

    def cpu(name: str) -> float:
        return median(name, lambda r: r["cpu"]["server_us_per_answer"])

    lines = [f"Accepts, 64 bots reconnecting at once; medians of {args.rounds} rounds of "
             f"{args.seconds:g} s, servers stormed in turn",
             f"{'':22}{'accepts/s':>10}{'CPU µs/accept':>15}{'less than Nember':>18}"]
    for name in results:
        saved = "" if name in ("floor", "Nember") else f"{cpu('Nember') - cpu(name):>14,.0f} µs"
        lines.append(f"{name:22}{median(name, lambda r: r['per_second']):>10,.0f}"
                     f"{cpu(name):>15,.0f}{saved:>18}".rstrip())
    spread = [min(r["per_second"] for r in results["floor"]),
              max(r["per_second"] for r in results["floor"])]
    lines.append(f"(the floor's rounds ranged {spread[0]:,.0f}-{spread[1]:,.0f}/s: the machine's "
                 "drift over the run)")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2], sys.argv[3])
    else:
        main()
