"""Nember on shared stores: accepts per second, nginx against direct, close and revoke across
nodes (PROTOCOL §5).

    .venv/bin/python benchmarks/cluster.py [--accept-levels 1,8,32] [--accept-seconds 3]
                                           [--levels 1,16,64] [--seconds 4] [--trials 50]
                                           [--live 0,1000,4000] [--nginx-cores 1,0]
                                           [--quiet-wait 3] [--no-pin]

It needs PostgreSQL and Redis (--postgres, --redis; by default NEMBER_TEST_POSTGRES and
NEMBER_TEST_REDIS, else the machine's 127.0.0.1:5432/test and 127.0.0.1:6379/0) and nginx.
It makes a database and a Redis key prefix of its own, and drops them at the end, however the
run ends (Ctrl-C included), as it stops every process it started. Servers run pinned to core 1
(`taskset -c 1`) and this script, the load generator, to core 0, so that the server's numbers
are its own; PostgreSQL and Redis are the machine's services, not pinned.

1. Accepted connections per second: C connectors, each opening a websocket, sending the key
   and waiting for `Valid API key.` (which follows the durable charge), then the next; the
   sockets stay open until the level ends (a close costs a second write, the usage record,
   which is not measured here). First the floor, benchmarks/echo_server.py (the same aiohttp
   stack answering any key, no stores: the websocket handshake's own cost); then one node
   on the embedded stores (SQLite); on PostgreSQL (key store, billing, models, jobs) with the
   registry on SQLite; and the same with the registry on Redis. Per level: accepts/s,
   p50/p99 accept latency, the CPU of the server, of this load generator, of PostgreSQL
   (this database's backends) and of Redis, and the WAL flushes per charge. As the sockets
   stay open, the account's live connections grow to about the level's count: so, on the
   Redis node, one connector's accepts beside N live connections of the same account, and
   of another account (--live). Then the durable charge alone: the billing ledger a server
   uses, driven in this process, N charges at once (what grouping commits could save is
   bounded by it).
2. Predictions per second through nginx (examples/cluster/nginx.conf, one worker, this
   node as its only upstream) against direct to the same node and model (DecisionTree/class):
   N connections each sending requests back to back for S seconds; p50/p99 per request.
   nginx runs on the node's core, then on the load generator's (--nginx-cores).
3. Close and revoke across nodes: two nodes on PostgreSQL + Redis, a socket on node A, the
   REST call (`DELETE /api/connections/{id}`, `DELETE /api/keys/{id}`) sent to node B; the
   time from sending the call to the client seeing the close frame (4000, 4401).

CPU columns are % of one core over the measured window; `other%` is the rest of the machine
(anything this run did not start): near 0 on a quiet machine, and noise when it is not. Before
each measurement the run waits until the server is idle and, up to --quiet-wait seconds,
until the machine is. It prints a table per section and writes everything as JSON
(benchmarks/results/cluster.json); it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from benchmarks.loadgen import percentiles, raise_fd_limit  # noqa: E402
from benchmarks.run import POINTS, free_port, say  # noqa: E402

NEMBER = str(Path(sys.executable).with_name("nember"))
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
EXAMPLE_NGINX = HERE.parent / "examples" / "cluster" / "nginx.conf"
POSTGRES = os.environ.get("NEMBER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("NEMBER_TEST_REDIS", "redis://127.0.0.1:6379/0")
EMAIL = "bench@example.com"
PASSWORD = "cluster-benchmark"
FRAME = json.dumps({"strat_name": "bench", "model_name": "DecisionTree", "model_type": "class",
                    "DataPoints": POINTS})
LOADGEN_CPU, SERVER_CPU = 0, 1
MAX_OPEN = 15000  # sockets one accept level may hold open (file descriptors: 20,000 here)
TICK = os.sysconf("SC_CLK_TCK")


# --- processes and what the run leaves behind ---------------------------------------------

class Cleanup:
    """What the run started or made, undone in reverse order however it ends."""

    def __init__(self):
        self._undo: list[tuple[str, Callable[[], object]]] = []

    def add(self, what: str, undo: Callable[[], object]) -> None:
        self._undo.append((what, undo))

    def run(self) -> None:
        # A second Ctrl-C must not leave half of it undone.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except Exception as exc:
                print(f"cleanup: {what}: {exc!r}", file=sys.stderr)


def pinned(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None else []


class Proc:
    """A server or nginx, in a process group of its own (so that a Ctrl-C in the terminal
    reaches this script only, and stopping it takes its children along)."""

    def __init__(self, name: str, command: list[str], log: Path, cleanup: Cleanup,
                 cpu: int | None = None):
        self.name, self.log_path, self.port = name, log, 0
        self._log = open(log, "ab")
        self.process = subprocess.Popen([*pinned(cpu), *command], stdout=self._log,
                                        stderr=self._log, start_new_session=True)
        cleanup.add(f"stop {name}", self.stop)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_listening(self, port: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.tail()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {port}:\n{self.tail()}")

    def tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-15:])

    def stop(self, timeout: float = 20) -> None:
        if self.process.poll() is None:  # not reaped: the group is still ours
            try:
                os.killpg(self.process.pid, signal.SIGTERM)  # a server drains with 1001
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
            except ProcessLookupError:
                self.process.wait(10)
        self._log.close()


def cli(config: Path, *args: str) -> str:
    out = subprocess.run([NEMBER, "--config", str(config), *args], capture_output=True,
                         text=True, env={**os.environ, "NEMBER_PASSWORD": PASSWORD}, timeout=300)
    if out.returncode:
        raise RuntimeError(f"nember {' '.join(args[:2])} failed: {out.stderr.strip()}")
    return out.stdout


def write_config(folder: Path, port: int, node: str, **stores) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "data_dir": "data",
        "server": {"host": "127.0.0.1", "port": port, "node": node, "compile_trees": False,
                   "max_connections_per_account": 100000,
                   # a benchmark's tight loop would hit the per-connection rate limit: lift it
                   "rate_limit": {"per_second": 100000000, "burst": 100000000}},
        "log": {"level": "warning"},
        "dashboard": {"enabled": False},
        **stores,
    }
    path = folder / "nember.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_node(name: str, config: Path, cleanup: Cleanup, cpu: int | None) -> Proc:
    port = yaml.safe_load(config.read_text())["server"]["port"]
    node = Proc(name, [NEMBER, "--config", str(config), "serve"],
                config.parent / "server.log", cleanup, cpu)
    node.wait_listening(port)
    node.port = port
    return node


def nginx_config(folder: Path, listen: int, upstream: int) -> Path:
    """The example's config with this run's ports; one worker, as it is pinned to one core."""
    text = EXAMPLE_NGINX.read_text()
    text = re.sub(r"(        server 127\.0\.0\.1:\d+;\n)+",
                  f"        server 127.0.0.1:{upstream};\n", text)
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{listen};")
    text = re.sub(r"worker_processes \w+;", "worker_processes 1;", text)
    path = folder / f"nginx-{listen}.conf"
    path.write_text(text)
    return path


def start_nginx(folder: Path, upstream: int, cleanup: Cleanup, cpu: int | None) -> tuple:
    port = free_port()
    conf = nginx_config(folder, port, upstream)
    (folder / "logs").mkdir(exist_ok=True)
    user = " user root;" if os.geteuid() == 0 else ""
    proc = Proc(f"nginx (core {cpu})", [NGINX, "-p", str(folder), "-c", str(conf), "-e",
                                         "stderr", "-g", f"daemon off;{user}"],
                folder / f"nginx-{port}.log", cleanup, cpu)
    proc.wait_listening(port)
    return proc, port


# --- PostgreSQL and Redis -------------------------------------------------------------------

def with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


async def _admin(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def make_database(admin: str, cleanup: Cleanup) -> str:
    name = f"nember_bench_{secrets.token_hex(4)}"
    asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
    drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    cleanup.add(f"drop database {name}", lambda: asyncio.run(_admin(admin, drop)))
    return with_database(admin, name)


def redis_prefix(url: str, cleanup: Cleanup) -> str:
    import redis

    client = redis.from_url(url)
    client.ping()
    client.close()
    prefix = f"nember-bench-{secrets.token_hex(4)}:"

    def delete() -> None:
        client = redis.from_url(url)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
        finally:
            client.close()

    cleanup.add(f"delete the Redis keys {prefix}*", delete)
    return prefix


class NoLedger:
    """The echo floor's: nothing is charged."""

    async def charges(self) -> int:
        return 0

    async def open_rows(self) -> int:
        return 0

    async def wal_syncs(self) -> int | None:
        return None


class SqliteLedger:
    """The embedded billing ledger, read directly: charges and usage rows still open."""

    def __init__(self, path: Path):
        self.path = path

    def _one(self, sql: str) -> int:
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        try:
            return db.execute(sql).fetchone()[0]
        finally:
            db.close()

    async def charges(self) -> int:
        return self._one("SELECT COUNT(*) FROM charges")

    async def open_rows(self) -> int:
        return self._one("SELECT COUNT(*) FROM usage WHERE closed_at IS NULL")

    async def wal_syncs(self) -> int | None:
        return None


class PostgresLedger:
    """The PostgreSQL billing ledger, read directly; and the server's WAL flushes so far."""

    def __init__(self, dsn: str):
        self.dsn = dsn

    async def _one(self, sql: str) -> int:
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    async def charges(self) -> int:
        return await self._one("SELECT COUNT(*) FROM nember_charges")

    async def open_rows(self) -> int:
        return await self._one("SELECT COUNT(*) FROM nember_usage WHERE closed_at IS NULL")

    async def wal_syncs(self) -> int | None:
        """WAL flushes so far, of the whole PostgreSQL server (other databases' included)."""
        return await self._one("SELECT wal_sync FROM pg_stat_wal")

    async def forget(self, account_id: str) -> None:
        """Delete an account's charges (the charge-alone rows: no server holds them)."""
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        try:
            async with conn.transaction():
                await conn.execute("DELETE FROM nember_usage WHERE account_id = $1", account_id)
                await conn.execute("DELETE FROM nember_charges WHERE account_id = $1",
                                   account_id)
        finally:
            await conn.close()


# --- CPU --------------------------------------------------------------------------------------

def _cpu_ticks(pid: int) -> int:
    """utime + stime, and the children's it reaped (cutime + cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(x) for x in fields[11:15])


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its living descendants."""
    total = _cpu_ticks(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                total += cpu_seconds(int(child)) * TICK
            except OSError:
                pass
    return total / TICK


# This run's stores, when they run on this machine: PostgreSQL's postmaster, the database
# whose backends count, and the Redis server.
STORES: dict = {"postmaster": None, "database": None, "redis": None}


def find_stores(admin: str, redis_url: str) -> None:
    import asyncpg
    import redis

    async def postmaster() -> int | None:
        conn = await asyncpg.connect(admin)
        try:  # while the backend lives: its parent is the postmaster
            status = Path(f"/proc/{await conn.fetchval('SELECT pg_backend_pid()')}/status")
            return int(status.read_text().split("PPid:")[1].split()[0])
        except OSError:
            return None  # a PostgreSQL elsewhere
        finally:
            await conn.close()

    STORES["postmaster"] = asyncio.run(postmaster())
    client = redis.from_url(redis_url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    if Path(f"/proc/{pid}").exists():
        STORES["redis"] = pid


def store_cpu() -> dict[int, float]:
    """CPU seconds so far of each backend of this run's database (found by its process title,
    "postgres: 15/main: USER DATABASE HOST(PORT) STATE": not other users' work) and of Redis.
    A delta between two of these counts the processes of the second (from 0 when new)."""
    found: dict[int, float] = {}
    if STORES["redis"]:
        try:
            found[STORES["redis"]] = cpu_seconds(STORES["redis"])
        except OSError:
            pass
    postmaster, database = STORES["postmaster"], STORES["database"]
    if postmaster and database:
        try:
            children = [int(c) for task in Path(f"/proc/{postmaster}/task").iterdir()
                        for c in (task / "children").read_text().split()]
        except OSError:
            children = []
        for pid in children:
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                if f" {database} " in title:
                    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                    found[pid] = (int(fields[11]) + int(fields[12])) / TICK
            except OSError:
                pass
    return found


def store_delta(a: dict[int, float], b: dict[int, float]) -> tuple[float, float]:
    """CPU seconds between two ``store_cpu``: PostgreSQL's (this database's backends), Redis's."""
    redis = STORES["redis"]
    postgres = sum(s - a.get(pid, 0.0) for pid, s in b.items() if pid != redis)
    return postgres, b.get(redis, 0.0) - a.get(redis, 0.0)


def machine_cpu_seconds() -> float:
    """CPU time the whole machine has been busy (every core; /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICK


def settle(pids: list[int], quiet_wait: float) -> float:
    """Wait until the processes are idle (under 10 % of a core, 0.5 s samples), and for up to
    ``quiet_wait`` seconds until the rest of the machine is quiet too (under 25 %): a
    measurement starts on an idle server, and on a shared machine between other people's
    bursts when it can. Returns the seconds waited."""
    started = time.monotonic()
    while True:
        ours, machine = sum(cpu_seconds(p) for p in pids), machine_cpu_seconds()
        time.sleep(0.5)
        ours = (sum(cpu_seconds(p) for p in pids) - ours) / 0.5 * 100
        machine = (machine_cpu_seconds() - machine) / 0.5 * 100
        waited = time.monotonic() - started
        if (ours < 10 and (machine - ours < 25 or waited >= quiet_wait)) or waited >= 30:
            return waited


class CpuWindow:
    """CPU use (% of one core) over a window: the server(s), a proxy, this process (the load
    generator) and the stores; ``other_cpu`` is the rest of the machine (other people's work:
    noise, when it is not near 0)."""

    def __init__(self, pids: list[int], proxy: list[int] = ()):
        self.pids, self.proxy = pids, list(proxy)

    def snapshot(self) -> tuple:
        return (time.perf_counter(), sum(cpu_seconds(p) for p in self.pids),
                sum(cpu_seconds(p) for p in self.proxy), time.process_time(),
                store_cpu(), machine_cpu_seconds())

    @staticmethod
    def between(a: tuple, b: tuple) -> dict:
        wall = b[0] - a[0]
        server, proxy, client, _, machine = (max(0.0, (b[i] - a[i]) / wall * 100)
                                             for i in (1, 2, 3, 0, 5))
        postgres, redis = (100 * x / wall for x in store_delta(a[4], b[4]))
        return {"server_cpu": server, "proxy_cpu": proxy, "client_cpu": client,
                "postgres_cpu": postgres, "redis_cpu": redis,
                "other_cpu": max(0.0, machine - server - proxy - client - postgres - redis)}


# --- 1. accepts ------------------------------------------------------------------------------

async def until_drained(ledger, timeout: float = 120) -> int:
    """Wait for every usage row to be closed (the last level's sockets' ends recorded)."""
    deadline = time.monotonic() + timeout
    while (left := await ledger.open_rows()) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return left


async def accept_level(url: str, key: str, connectors: int, seconds: float, warmup: float,
                       ledger, cpu: CpuWindow) -> dict:
    await until_drained(ledger)
    await asyncio.sleep(0.5)
    charges_before, wal_before = await ledger.charges(), await ledger.wal_syncs()
    clock = time.perf_counter
    window: list[tuple] = []
    samples: list[int] = []  # ns, of the accepts that ended inside the window
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    accepted = refused = failed = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=None)) as session:
        warm_until = clock() + warmup
        stop_at = warm_until + seconds

        async def watch() -> None:
            await asyncio.sleep(warm_until - clock())
            window.append(cpu.snapshot())
            await asyncio.sleep(stop_at - clock())
            window.append(cpu.snapshot())

        async def connector() -> None:
            nonlocal accepted, refused, failed
            while clock() < stop_at and len(sockets) < MAX_OPEN:
                t0 = time.perf_counter_ns()
                try:
                    ws = await session.ws_connect(url, compress=0, max_msg_size=0)
                    sockets.append(ws)
                    await ws.send_str(key)
                    msg = await ws.receive(timeout=30)
                except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
                    failed += 1
                    await asyncio.sleep(0.01)
                    continue
                t1 = time.perf_counter_ns()
                if msg.type is not aiohttp.WSMsgType.TEXT or '"success"' not in msg.data:
                    refused += 1
                    continue
                accepted += 1
                if warm_until <= t1 / 1e9 < stop_at:
                    samples.append(t1 - t0)

        watcher = asyncio.create_task(watch())
        # The thousands of sockets held make the collector's full passes long: pauses of the
        # load generator's, not the server's.
        gc.disable()
        try:
            await asyncio.gather(*(connector() for _ in range(connectors)))
            await watcher
        finally:
            gc.enable()
        held = len(sockets)
        wal_after = None
        if wal_before is not None:
            await asyncio.sleep(1.5)  # PostgreSQL publishes a backend's statistics when idle
            wal_after = await ledger.wal_syncs()
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    left = await until_drained(ledger)
    charged = await ledger.charges() - charges_before
    stats = percentiles(samples) if samples else {"p50": 0, "p99": 0, "max": 0, "count": 0}
    return {
        "connectors": connectors, "accepts_per_second": len(samples) / seconds,
        "p50_ms": stats["p50"] / 1000, "p99_ms": stats["p99"] / 1000,
        "max_ms": stats["max"] / 1000, **CpuWindow.between(*window),
        "accepted": accepted, "charged": charged, "refused": refused, "failed": failed,
        "held_open": held, "left_open_after": left,
        "wal_syncs_per_charge": (wal_after - wal_before) / charged
        if wal_after is not None and charged else None,
    }


def accept_phase(label: str, url: str, key: str, levels: list[int], seconds: float,
                 ledger, pids: list[int], quiet_wait: float) -> list[dict]:
    rows = []
    for level in levels:
        waited = settle(pids, quiet_wait)
        say(f"  accepts, {label}, {level} connector(s)"
            + (f" (waited {waited:.1f} s for an idle server)" if waited > 1 else ""))
        row = asyncio.run(accept_level(url, key, level, seconds, 0.5, ledger, CpuWindow(pids)))
        rows.append({"stores": label, **row})
    return rows


async def live_levels(url: str, key: str, other_key: str, counts: list[int], seconds: float,
                      ledger, pids: list[int], quiet_wait: float) -> list[dict]:
    """One connector's accepts while the account already holds N live connections, and, for
    comparison, another account's at the same moment: what the registry's per-account limit
    check costs as an account's connections grow."""
    rows = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=None)) as session:
        async def accept(secret: str):
            ws = await session.ws_connect(url, compress=0, max_msg_size=0)
            await ws.send_str(secret)
            answer = await ws.receive(timeout=30)
            if answer.type is not aiohttp.WSMsgType.TEXT or '"success"' not in answer.data:
                raise RuntimeError(f"refused: {answer.data}")
            return ws

        held: list = []
        gate = asyncio.Semaphore(64)

        async def hold():
            async with gate:
                held.append(await accept(key))

        try:
            for count in counts:
                say(f"  accepts beside {count} live connections of the account")
                await asyncio.gather(*(hold() for _ in range(count - len(held))))
                for label, secret in (("same account", key), ("another account", other_key)):
                    await asyncio.to_thread(settle, pids, quiet_wait)
                    cpu = CpuWindow(pids)
                    start, samples, sockets = cpu.snapshot(), [], []
                    stop_at = time.perf_counter() + seconds
                    try:
                        while time.perf_counter() < stop_at:
                            t0 = time.perf_counter_ns()
                            sockets.append(await accept(secret))
                            samples.append(time.perf_counter_ns() - t0)
                        end = cpu.snapshot()
                    finally:
                        await asyncio.gather(*(ws.close() for ws in sockets),
                                             return_exceptions=True)
                    stats = percentiles(samples)
                    rows.append({"live": count, "account": label,
                                 "accepts_per_second": len(samples) / (end[0] - start[0]),
                                 "p50_ms": stats["p50"] / 1000, "p99_ms": stats["p99"] / 1000,
                                 **CpuWindow.between(start, end)})
        finally:
            await asyncio.gather(*(ws.close() for ws in held), return_exceptions=True)
    await until_drained(ledger)
    return rows


async def charge_level(open_ledger, concurrency: int, seconds: float, wal, tidy) -> dict:
    """The durable charge alone, in this process: ``concurrency`` coroutines charging back to
    back through the ledger a server uses (one transaction, committed durably, each)."""
    from decimal import Decimal

    from nember_core.credentials import new_id
    from nember_core.records import ConnectionUsage, utcnow

    ledger = await open_ledger()
    try:
        for _ in range(20):  # warm: the pool's connections, SQLite's pages
            await ledger.charge(ConnectionUsage(new_id("conn"), "acc_bench", "key_bench",
                                                "127.0.0.1", utcnow()), Decimal("0.01"), "USD")
        samples: list[int] = []
        wal_before = await wal()
        before = (time.perf_counter(), time.process_time(), store_cpu(),
                  machine_cpu_seconds())
        stop_at = before[0] + seconds

        async def charger() -> None:
            while time.perf_counter() < stop_at:
                usage = ConnectionUsage(new_id("conn"), "acc_bench", "key_bench", "127.0.0.1",
                                        utcnow())
                t0 = time.perf_counter_ns()
                await ledger.charge(usage, Decimal("0.01"), "USD")
                samples.append(time.perf_counter_ns() - t0)

        await asyncio.gather(*(charger() for _ in range(concurrency)))
        after = (time.perf_counter(), time.process_time(), store_cpu(),
                 machine_cpu_seconds())
        wal_after = None
        if wal_before is not None:
            await asyncio.sleep(1.5)  # PostgreSQL publishes a backend's statistics when idle
            wal_after = await wal()
    finally:
        await ledger.close()
        await tidy("acc_bench")
    wall = after[0] - before[0]
    postgres = store_delta(before[2], after[2])[0]
    stats = percentiles(samples)
    return {"concurrency": concurrency, "per_second": len(samples) / wall,
            "p50_ms": stats["p50"] / 1000, "p99_ms": stats["p99"] / 1000,
            "cpu_us_per_charge": 1e6 * (after[1] - before[1]) / len(samples),
            "postgres_cpu": 100 * postgres / wall,
            "other_cpu": max(0.0, 100 * ((after[3] - before[3]) - postgres
                                         - (after[1] - before[1])) / wall),
            "wal_syncs_per_charge": (wal_after - wal_before) / len(samples)
            if wal_after is not None else None}


def charge_phase(folder: Path, dsn: str, levels: list[int], seconds: float,
                 quiet_wait: float) -> list[dict]:
    from nember_postgres.billing import PostgresBillingLedger
    from nember_postgres.options import PostgresOptions
    from nember_sqlite.billing import SqliteBillingLedger

    async def nothing(*args) -> None:
        return None

    shared = PostgresLedger(dsn)
    setups = [("sqlite", lambda: SqliteBillingLedger.open(folder / "charges.sqlite3"), nothing,
               nothing),
              ("postgres (pool_size 5)",
               lambda: PostgresBillingLedger.open(PostgresOptions(dsn=dsn)), shared.wal_syncs,
               shared.forget)]
    rows = []
    for label, open_ledger, wal, tidy in setups:
        for level in levels:
            settle([], quiet_wait)
            say(f"  the charge alone, {label}, {level} at once")
            row = asyncio.run(charge_level(open_ledger, level, seconds, wal, tidy))
            rows.append({"ledger": label, **row})
    return rows


# --- 2. predictions ------------------------------------------------------------------------

async def predictions(url: str, key: str, connections: int, seconds: float,
                      cpu: CpuWindow) -> dict:
    """N connections, each sending a request and waiting for its answer, back to back (as
    benchmarks/loadgen.py throughput does), with the CPU measured over the same window."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def open_one():
            ws = await session.ws_connect(url, compress=0, max_msg_size=0)
            await ws.send_str(key)
            answer = await ws.receive(timeout=30)
            if '"success"' not in answer.data:
                raise RuntimeError(f"refused: {answer.data}")
            return ws

        sockets = await asyncio.gather(*(open_one() for _ in range(connections)))
        warm_until = time.perf_counter() + min(1.0, seconds / 3)
        stop_at = warm_until + seconds
        per_socket: list[list[int]] = [[] for _ in sockets]
        window: list[tuple] = []
        errors = [0]

        async def watch() -> None:
            await asyncio.sleep(warm_until - time.perf_counter())
            window.append(cpu.snapshot())
            await asyncio.sleep(stop_at - time.perf_counter())
            window.append(cpu.snapshot())

        async def drive(ws, samples: list[int]) -> None:
            send, receive, clock = ws.send_str, ws.receive, time.perf_counter_ns
            while True:
                t0 = clock()
                await send(FRAME)
                msg = await receive()
                now = time.perf_counter()
                if '"success"' not in msg.data:
                    errors[0] += 1
                if now >= stop_at:
                    return
                if now >= warm_until:
                    samples.append(clock() - t0)

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(drive(ws, s) for ws, s in zip(sockets, per_socket, strict=True)))
        await watcher
        await asyncio.gather(*(ws.close() for ws in sockets))
    samples = [x for s in per_socket for x in s]
    stats = percentiles(samples)
    return {"connections": connections, "per_second": len(samples) / seconds,
            "p50_us": stats["p50"], "p99_us": stats["p99"], "errors": errors[0],
            **CpuWindow.between(*window)}


# --- 3. close and revoke across nodes ------------------------------------------------------

async def across_nodes(node_a: str, node_b: str, manage: str, trials: int) -> dict:
    """A socket on node A; the REST call to node B; until the client sees the close frame."""
    headers = {"Authorization": f"Bearer {manage}"}
    ws_url = node_a.replace("http://", "ws://") + "/ws"
    clock = time.perf_counter
    out = {"close": {"total": [], "rest": [], "missed": 0},
           "revoke": {"total": [], "rest": [], "missed": 0}}

    async with aiohttp.ClientSession(headers=headers) as session:
        async def new_key(name: str) -> dict:
            async with session.post(f"{node_b}/api/keys",
                                    json={"name": name, "scope": "predict"}) as response:
                return await response.json()

        async def authed(secret: str):
            ws = await session.ws_connect(ws_url, compress=0)
            await ws.send_str(secret)
            answer = await ws.receive(timeout=10)
            if '"success"' not in answer.data:
                raise RuntimeError(f"refused: {answer.data}")
            return ws

        async def closed(ws) -> tuple[float, object]:
            msg = await ws.receive(timeout=5)
            return clock(), msg.data if msg.type is aiohttp.WSMsgType.CLOSE else msg.type

        async def timed(ws, path: str, expected: int, into: dict) -> None:
            waiting = asyncio.create_task(closed(ws))
            await asyncio.sleep(0)  # already receiving when the call goes out
            t0 = clock()
            async with session.delete(f"{node_b}{path}") as response:
                await response.read()
                status = response.status
            rest = clock() - t0
            try:
                seen, code = await waiting
            except asyncio.TimeoutError:
                seen, code = None, "timeout"
            if status != 200 or code != expected:
                into["missed"] += 1
                say(f"    {path}: {status}, close {code} (expected 200, {expected})")
            else:
                into["total"].append(seen - t0)
                into["rest"].append(rest)
            await ws.close()

        bot = await new_key("bench-close")
        seen_ids: set[str] = set()
        for _ in range(trials):
            ws = await authed(bot["key"])
            async with session.get(f"{node_b}/api/connections") as response:
                listed = (await response.json())["items"]
            mine = [c for c in listed if c["key_id"] == bot["id"] and c["id"] not in seen_ids]
            if len(mine) != 1:
                say(f"    expected one new connection listed by node B, found {len(mine)}")
                out["close"]["missed"] += 1
                await ws.close()
                continue
            seen_ids.add(mine[0]["id"])
            await timed(ws, f"/api/connections/{mine[0]['id']}", 4000, out["close"])
        for n in range(trials):
            doomed = await new_key(f"bench-revoke-{n}")
            ws = await authed(doomed["key"])
            await timed(ws, f"/api/keys/{doomed['id']}", 4401, out["revoke"])

    def summary(found: dict) -> dict:
        def ms(values: list[float], q: float) -> float:
            ordered = sorted(values)
            return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0

        return {"trials": len(found["total"]), "missed": found["missed"],
                "p50_ms": ms(found["total"], 0.5), "p99_ms": ms(found["total"], 0.99),
                "max_ms": ms(found["total"], 1.0), "rest_p50_ms": ms(found["rest"], 0.5),
                "rest_p99_ms": ms(found["rest"], 0.99)}

    return {what: summary(found) for what, found in out.items()}


# --- the run -------------------------------------------------------------------------------

def fdatasync_us(folder: Path, n: int = 200) -> float:
    """What one small durable write costs on the disk the SQLite files are on."""
    path = folder / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        started = time.perf_counter()
        for _ in range(n):
            os.write(fd, b"x" * 100)
            os.fdatasync(fd)
        return (time.perf_counter() - started) / n * 1e6
    finally:
        os.close(fd)
        path.unlink()


def postgres_settings(admin: str) -> dict:
    async def read() -> dict:
        import asyncpg

        conn = await asyncpg.connect(admin)
        try:
            return {name: await conn.fetchval(f"SHOW {name}") for name in
                    ("server_version", "fsync", "synchronous_commit", "wal_sync_method",
                     "commit_delay")}
        finally:
            await conn.close()

    return asyncio.run(read())


def run(args, folder: Path, cleanup: Cleanup, pin: bool) -> dict:
    server_cpu = SERVER_CPU if pin else None
    report: dict = {"accepts": [], "live": [], "charges": [], "predictions": [],
                    "across_nodes": {}}
    prices = folder / "prices.csv"
    from nember_core.app.demo import write_prices

    write_prices(prices)
    report["fdatasync_us"] = fdatasync_us(folder)
    report["postgres"] = postgres_settings(args.postgres)
    find_stores(args.postgres, args.redis)

    # 1. The floor: benchmarks/echo_server.py, the same stack answering any key, no stores.
    if "floor" in args.stores:
        say("the floor: the echo server")
        port = free_port()
        echo = Proc("echo server", [sys.executable, str(HERE / "echo_server.py"), str(port)],
                    folder / "echo.log", cleanup, server_cpu)
        echo.wait_listening(port)
        report["accepts"] += accept_phase(
            "floor (echo, no stores)", f"ws://127.0.0.1:{port}/ws", "any", args.accept_levels,
            args.accept_seconds, NoLedger(), [echo.pid], args.quiet_wait)
        echo.stop()

    # 1a. The embedded stores.
    if "sqlite" in args.stores:
        say("embedded stores (SQLite): account, key, server")
        config = write_config(folder / "sqlite", free_port(), "sqlite")
        cli(config, "accounts", "create", EMAIL)
        key = cli(config, "keys", "create", "--account", EMAIL).strip().splitlines()[-1]
        node = start_node("node (sqlite)", config, cleanup, server_cpu)
        report["accepts"] += accept_phase(
            "sqlite (embedded)", f"ws://127.0.0.1:{node.port}/ws", key, args.accept_levels,
            args.accept_seconds, SqliteLedger(config.parent / "data" / "billing.sqlite3"),
            [node.pid], args.quiet_wait)
        node.stop()

    # The shared stores: one database, one Redis prefix, for every node below.
    say("shared stores: database, Redis prefix, account, keys, model")
    dsn = make_database(args.postgres, cleanup)
    STORES["database"] = urlsplit(dsn).path.lstrip("/")
    prefix = redis_prefix(args.redis, cleanup)
    shared = {"plugin": "postgres", "dsn": dsn}
    stores = dict(key_store=shared, billing=shared, model_store=shared, jobs=shared)
    redis_registry = {"plugin": "redis", "url": args.redis, "prefix": prefix}
    config_a = write_config(folder / "node-a", free_port(), "node-a", **stores,
                            connection_registry=redis_registry)
    config_b = write_config(folder / "node-b", free_port(), "node-b", **stores,
                            connection_registry=redis_registry)
    cli(config_a, "db", "upgrade")
    cli(config_a, "accounts", "create", EMAIL)
    key = cli(config_a, "keys", "create", "--account", EMAIL).strip().splitlines()[-1]
    manage = cli(config_a, "keys", "create", "--account", EMAIL, "--scope",
                 "manage").strip().splitlines()[-1]
    cli(config_a, "train", "--account", EMAIL, "--strat", "bench", "--model", "DecisionTree",
        "--type", "class", "--data", str(prices), "--target", "direction", "--window", "2",
        "--features", "point1,point2")
    ledger = PostgresLedger(dsn)
    if not args.no_charges:
        report["charges"] = charge_phase(folder, dsn, args.accept_levels, args.accept_seconds,
                                         args.quiet_wait)

    # 1b. PostgreSQL, the registry on SQLite (this node's own file).
    if "postgres-sqlite" in args.stores:
        config_c = write_config(folder / "node-c", free_port(), "node-c", **stores)
        node = start_node("node (postgres, sqlite registry)", config_c, cleanup, server_cpu)
        report["accepts"] += accept_phase(
            "postgres, registry sqlite", f"ws://127.0.0.1:{node.port}/ws", key,
            args.accept_levels, args.accept_seconds, ledger, [node.pid], args.quiet_wait)
        node.stop()

    node_a = start_node("node A", config_a, cleanup, server_cpu)
    node_b = start_node("node B", config_b, cleanup, server_cpu)
    direct = f"ws://127.0.0.1:{node_a.port}/ws"

    # 1c. PostgreSQL and Redis, as a cluster's node.
    if "postgres-redis" in args.stores:
        report["accepts"] += accept_phase("postgres, registry redis", direct, key,
                                          args.accept_levels, args.accept_seconds, ledger,
                                          [node_a.pid], args.quiet_wait)
    if args.live:
        cli(config_a, "accounts", "create", "other@example.com")
        other = cli(config_a, "keys", "create", "--account",
                    "other@example.com").strip().splitlines()[-1]
        report["live"] = asyncio.run(live_levels(direct, key, other, args.live, 2.0, ledger,
                                                 [node_a.pid], args.quiet_wait))

    # 2. Predictions, direct and through nginx.
    paths = [("direct to node A", direct, None)]
    for core in (args.nginx_cores if pin else [None]):
        paths.append((f"nginx -> A (nginx on core {core})" if core is not None
                      else "nginx -> A", None, core))
    for label, url, core in paths:
        proxy = None
        if url is None:
            proxy, port = start_nginx(folder, node_a.port, cleanup, core)
            url = f"ws://127.0.0.1:{port}/ws"
        proxy_pids = [proxy.pid] if proxy else []
        for level in args.levels:
            waited = settle([node_a.pid, *proxy_pids], args.quiet_wait)
            say(f"  predictions, {label}, {level} connection(s)"
                + (f" (waited {waited:.1f} s for an idle server)" if waited > 1 else ""))
            result = asyncio.run(predictions(url, key, level, args.seconds,
                                             CpuWindow([node_a.pid], proxy_pids)))
            report["predictions"].append({"path": label, **result})
        if proxy:
            proxy.stop()

    # 3. Close and revoke, asked of node B, for a socket on node A.
    say(f"  close and revoke across nodes, {args.trials} trials each")
    report["across_nodes"] = asyncio.run(across_nodes(
        f"http://127.0.0.1:{node_a.port}", f"http://127.0.0.1:{node_b.port}", manage,
        args.trials))
    return report


def render(report: dict) -> str:
    pg = report["postgres"]
    lines = [
        "", f"Machine: {report['machine']['cpus']} cores, Python {report['machine']['python']}, "
        f"{'servers on core 1, load generator on core 0' if report['pinned'] else 'not pinned'}"
        f"; fdatasync {report['fdatasync_us']:.0f} µs; PostgreSQL {pg['server_version'].split()[0]}"
        f" (fsync {pg['fsync']}, synchronous_commit {pg['synchronous_commit']}, "
        f"{pg['wal_sync_method']}, commit_delay {pg['commit_delay']}; pool_size 5)",
        "",
        f"1. Accepted connections (connect + key + \"Valid API key.\", charged durably), "
        f"{report['accept_seconds']:g} s per level, sockets held open",
        f"{'stores':<27}{'conn':>5}{'accepts/s':>11}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}"
        f"{'server%':>9}{'client%':>9}{'pg%':>5}{'redis%':>7}{'other%':>8}{'WAL/charge':>11}"
        f"{'charged':>14}",
    ]
    for r in report["accepts"]:
        wal = r["wal_syncs_per_charge"]
        lines.append(
            f"{r['stores']:<27}{r['connectors']:>5}{r['accepts_per_second']:>11,.0f}"
            f"{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}{r['max_ms']:>8.1f}{r['server_cpu']:>9.0f}"
            f"{r['client_cpu']:>9.0f}{r['postgres_cpu']:>5.0f}{r['redis_cpu']:>7.0f}"
            f"{r['other_cpu']:>8.0f}"
            f"{'-' if wal is None else format(wal, '.2f'):>11}"
            f"{str(r['charged']) + '/' + str(r['accepted']) if r['charged'] else '-':>14}"
            + (f"  refused {r['refused']}, failed {r['failed']}"
               if r["refused"] or r["failed"] else ""))
    if report["live"]:
        lines += ["", "   Beside N live connections of the account (node A: PostgreSQL + Redis), "
                  "one connector, 2 s",
                  f"{'':<16}{'live':>6}{'accepts/s':>11}{'p50 ms':>8}{'p99 ms':>8}{'server%':>9}"
                  f"{'pg%':>5}{'redis%':>7}{'other%':>8}"]
        for r in report["live"]:
            lines.append(f"{r['account']:<16}{r['live']:>6}{r['accepts_per_second']:>11,.0f}"
                         f"{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}{r['server_cpu']:>9.0f}"
                         f"{r['postgres_cpu']:>5.0f}{r['redis_cpu']:>7.0f}{r['other_cpu']:>8.0f}")
    if report["charges"]:
        lines += ["", "   The durable charge alone: the ledger driven in this process (core 0), "
                  "N charges at once, back to back",
                  f"{'ledger':<27}{'at once':>8}{'charges/s':>11}{'p50 ms':>8}{'p99 ms':>8}"
                  f"{'CPU µs/charge':>15}{'pg%':>5}{'other%':>8}{'WAL/charge':>11}"]
        for r in report["charges"]:
            wal = r["wal_syncs_per_charge"]
            lines.append(f"{r['ledger']:<27}{r['concurrency']:>8}{r['per_second']:>11,.0f}"
                         f"{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}{r['cpu_us_per_charge']:>15.0f}"
                         f"{r['postgres_cpu']:>5.0f}{r['other_cpu']:>8.0f}"
                         f"{'-' if wal is None else format(wal, '.2f'):>11}")
    lines += ["", f"2. Predictions (DecisionTree/class, node A), each connection back to back, "
              f"{report['seconds']:g} s per level",
              f"{'path':<32}{'conn':>5}{'predictions/s':>15}{'p50 µs':>8}{'p99 µs':>8}"
              f"{'server%':>9}{'nginx%':>8}{'client%':>9}{'other%':>8}"]
    for r in report["predictions"]:
        lines.append(f"{r['path']:<32}{r['connections']:>5}{r['per_second']:>15,.0f}"
                     f"{r['p50_us']:>8.0f}{r['p99_us']:>8.0f}{r['server_cpu']:>9.0f}"
                     f"{r['proxy_cpu']:>8.0f}{r['client_cpu']:>9.0f}{r['other_cpu']:>8.0f}"
                     + (f"  errors {r['errors']}" if r["errors"] else ""))
    across = report["across_nodes"]
    lines += ["", "3. Across nodes: socket on node A, REST call to node B; from the call sent "
              "to the close frame seen (ms)",
              f"{'':<16}{'trials':>7}{'p50':>8}{'p99':>8}{'max':>8}{'REST p50':>10}"
              f"{'REST p99':>10}{'missed':>8}"]
    for what, label in (("close", "close (4000)"), ("revoke", "revoke (4401)")):
        r = across[what]
        lines.append(f"{label:<16}{r['trials']:>7}{r['p50_ms']:>8.1f}{r['p99_ms']:>8.1f}"
                     f"{r['max_ms']:>8.1f}{r['rest_p50_ms']:>10.1f}{r['rest_p99_ms']:>10.1f}"
                     f"{r['missed']:>8}")
    return "\n".join(lines)


def numbers(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accept-levels", type=numbers, default=[1, 8, 32],
                        help="concurrent connectors")
    parser.add_argument("--accept-seconds", type=float, default=3.0, help="per accept level")
    parser.add_argument("--stores", default="floor,sqlite,postgres-sqlite,postgres-redis",
                        type=lambda s: s.split(","), help="the accept set-ups to measure")
    parser.add_argument("--live", type=numbers, default=[0, 1000, 4000],
                        help="live connections the account holds while one connector's "
                             "accepts are measured (Redis registry); '' skips")
    parser.add_argument("--no-charges", action="store_true",
                        help="skip the charge alone (the ledgers driven in-process)")
    parser.add_argument("--levels", type=numbers, default=[1, 16, 64],
                        help="prediction connections")
    parser.add_argument("--seconds", type=float, default=4.0, help="per prediction level")
    parser.add_argument("--trials", type=int, default=50, help="closes, and revokes")
    parser.add_argument("--nginx-cores", type=numbers, default=[1, 0],
                        help="where nginx runs: 1 shares the node's core, 0 the load "
                             "generator's; one prediction run per core")
    parser.add_argument("--no-pin", action="store_true", help="no taskset")
    parser.add_argument("--quiet-wait", type=float, default=3.0,
                        help="seconds to wait, before each measurement, for the rest of the "
                             "machine to be quiet (a shared machine); 0: don't")
    parser.add_argument("--postgres", default=POSTGRES, help="a DSN that may create databases")
    parser.add_argument("--redis", default=REDIS)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "cluster.json")
    args = parser.parse_args()
    if not Path(NGINX).exists():
        sys.exit(f"nginx is not installed ({NGINX})")
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset")
    if pin:
        os.sched_setaffinity(0, {LOADGEN_CPU})  # this process is the load generator
    raise_fd_limit()
    started = time.monotonic()

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    cleanup = Cleanup()
    folder = Path(tempfile.mkdtemp(prefix="nember-cluster-"))
    cleanup.add(f"remove {folder}", lambda: shutil.rmtree(folder, ignore_errors=True))
    try:
        report = run(args, folder, cleanup, bool(pin))
    except KeyboardInterrupt:
        say("interrupted: cleaning up")
        sys.exit(130)
    finally:
        cleanup.run()
    report.update({
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "pinned": bool(pin), "accept_seconds": args.accept_seconds, "seconds": args.seconds,
        "took_seconds": round(time.monotonic() - started, 1),
    })
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(render(report))
    print(f"\n(written to {args.json}; the whole run took {report['took_seconds']} s)")


if __name__ == "__main__":
    main()
