"""The load generator: runs in its own process, prints one JSON line of results.

    python benchmarks/loadgen.py latency    URL KEY FRAME --requests N --warmup N
                                            [--min-seconds S]
    python benchmarks/loadgen.py throughput URL KEY FRAME --connections C --seconds S [--prime]
    python benchmarks/loadgen.py idle       URL KEY --connections C
    python benchmarks/loadgen.py first      URL KEY FRAME --wait S
    python benchmarks/loadgen.py accepts    URL KEY --connections C --seconds S  (picows)

    options for all but idle: [--client aiohttp|picows] [--cpu-pid PID]

``idle`` opens C authenticated connections, prints {"ready": C}, and holds them until its
standard input closes. Every connection sends one request and waits for its answer before
the next (one prediction per round trip), like a bot on a tick.

``--client``: aiohttp (the default, as the server's own stack) or picows (a websocket client
in Cython, on uvloop when it is installed), several times cheaper per message: with it the
load generator is not what limits the throughput of a server on its own core.

``--cpu-pid PID``: the result gains ``cpu``, measured over exactly the measured window (after
the warm-up): the CPU time (utime + stime, fields 14 and 15 of /proc/PID/stat, in clock
ticks) of that process and, separately, of its living descendants; this process's own; the
rest of the machine's (other people's work: noise when it is not near 0), and, when the
server and this process are each pinned to a core of their own, the rest of each of those
two cores'; and the server's CPU µs per answer: its CPU time over the window divided by the
answers received in it. Busy fractions are of one core.

``first`` prints {"ready": true} once its imports are done, then polls the port of URL until
it accepts a connection (the server listens), waits --wait seconds, connects, authenticates
and sends FRAME: the time from listening, and from connecting, to the first answer; then 20
more round trips (their median: the steady state).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import sys
import time
from urllib.parse import urlsplit

import aiohttp

TICK = os.sysconf("SC_CLK_TCK")


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    if not samples_ns:
        raise RuntimeError("no answer in the measured window")
    ordered = sorted(samples_ns)
    n = len(ordered)

    def at(q: float) -> float:
        return ordered[min(n - 1, int(q * n))] / 1000.0  # µs

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "p999": at(0.999),
            "max": ordered[-1] / 1000.0, "count": n}


# --- CPU ---------------------------------------------------------------------------------

def process_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks: fields 14 and 15 of
    /proc/PID/stat (counted after the command name, which may hold spaces)."""
    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def descendants(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as children:
                for child in children.read().split():
                    found.append(int(child))
                    found += descendants(int(child))
    except OSError:  # it just exited
        pass
    return found


def descendant_ticks(pid: int) -> int:
    """utime + stime of the living descendants (compile and training pools)."""
    total = 0
    for child in descendants(pid):
        try:
            total += process_ticks(child)
        except OSError:
            pass
    return total


def busy_ticks() -> dict[str, int]:
    """Ticks each core has been busy (``cpu``: all of them), from /proc/stat. Steal (the host
    running something else on this core) counts as busy: it is time this machine lost."""
    busy = {}
    with open("/proc/stat") as stat:
        for line in stat:
            if not line.startswith("cpu"):
                break
            name, *values = line.split()
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, values[:8])
            busy[name] = user + nice + system + irq + softirq + steal
    return busy


def machine_ticks() -> int:
    """Ticks the whole machine has been busy, every core (the first line of /proc/stat)."""
    return busy_ticks()["cpu"]


def single_core(pid: int) -> int | None:
    """The one core a process may run on (pinned), else None."""
    cores = os.sched_getaffinity(pid)
    return next(iter(cores)) if len(cores) == 1 else None


class CpuProbe:
    """Snapshots around a measured window; ``between`` turns two into the ``cpu`` result.
    When the server and this process are each pinned to a core of their own, it also says
    how busy each core was with anything else (other people's work, the rest of the system:
    noise, unless near 0)."""

    def __init__(self, pid: int):
        self.pid = pid
        server, client = single_core(pid), single_core(0)
        pinned = server is not None and client is not None and server != client
        self.cores = (server, client) if pinned else None

    def snap(self) -> tuple:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return (time.perf_counter(), time.time(), process_ticks(self.pid),
                descendant_ticks(self.pid), usage.ru_utime + usage.ru_stime, busy_ticks())

    def between(self, a: tuple, b: tuple, answers: int) -> dict:
        wall = b[0] - a[0]
        server, children = b[2] - a[2], max(0, b[3] - a[3])
        client = b[4] - a[4]
        machine = (b[5]["cpu"] - a[5]["cpu"]) / TICK
        other = max(0.0, machine - (server + children) / TICK - client)
        result = {
            "server_us_per_answer": server / TICK * 1e6 / answers if answers else None,
            "server_ticks": server, "children_ticks": children, "tick_s": 1 / TICK,
            "answers": answers, "wall_s": wall,
            "server_busy": server / TICK / wall, "children_busy": children / TICK / wall,
            "client_busy": client / wall, "other_busy": other / wall,
            "client_us_per_answer": client * 1e6 / answers if answers else None,
            "window": [a[1], b[1]],
        }
        if self.cores:  # the server's pools run on its core too (they inherit it)
            on = [(b[5][f"cpu{core}"] - a[5][f"cpu{core}"]) / TICK for core in self.cores]
            result.update(
                server_core=self.cores[0], client_core=self.cores[1],
                server_core_other_busy=max(0.0, on[0] - (server + children) / TICK) / wall,
                client_core_other_busy=max(0.0, on[1] - client) / wall)
        return result


# --- aiohttp -----------------------------------------------------------------------------

async def open_authenticated(session: aiohttp.ClientSession, url: str, key: str):
    ws = await session.ws_connect(url, compress=0, autoping=True, max_msg_size=0)
    await ws.send_str(key)
    answer = await ws.receive()
    if answer.type != aiohttp.WSMsgType.TEXT:
        raise RuntimeError(f"authentication failed: {answer}")
    return ws


async def latency(url: str, key: str, frame: str, requests: int, warmup: int,
                  min_seconds: float = 0.0, probe: CpuProbe | None = None) -> dict:
    async with aiohttp.ClientSession() as session:
        ws = await open_authenticated(session, url, key)
        send, receive = ws.send_str, ws.receive
        for _ in range(warmup):
            await send(frame)
            await receive()
        samples = []
        clock = time.perf_counter_ns
        before = probe.snap() if probe else None
        started = clock()
        until = started + int(min_seconds * 1e9)
        while len(samples) < requests or samples and clock() < until:
            t0 = clock()
            await send(frame)
            msg = await receive()
            samples.append(clock() - t0)
        elapsed = (clock() - started) / 1e9
        after = probe.snap() if probe else None
        check(msg.data)
        await ws.close()
    result = {**percentiles(samples), "per_second": len(samples) / elapsed}
    if probe:
        result["cpu"] = probe.between(before, after, len(samples))
    return result


def check(answer: str | bytes) -> None:
    if (b'"error"' if isinstance(answer, bytes) else '"error"') in answer:
        raise RuntimeError(f"the server answered an error: {answer!r}")


async def _sample_window(probe: CpuProbe | None, answered: list[int], warm_until: float,
                         stop_at: float, window: dict) -> None:
    """CPU snapshots at the window's two ends, with the answers counted so far at each."""
    if probe is None:
        return
    await asyncio.sleep(max(0.0, warm_until - time.perf_counter()))
    start = probe.snap(), answered[0]
    await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
    end = probe.snap(), answered[0]
    window["cpu"] = probe.between(start[0], end[0], end[1] - start[1])


async def throughput(url: str, key: str, frame: str, connections: int, seconds: float,
                     probe: CpuProbe | None = None, prime: bool = False) -> dict:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0)
    ) as session:
        sockets = await asyncio.gather(
            *(open_authenticated(session, url, key) for _ in range(connections))
        )
        primed_at = None
        if prime:  # one answer first (a model's load), then the clock starts
            primed_at = time.time()
            await sockets[0].send_str(frame)
            check((await sockets[0].receive()).data)
        warm_until = time.perf_counter() + min(1.0, seconds / 3)
        stop_at = warm_until + seconds
        per_socket: list[list[int]] = [[] for _ in sockets]
        last: list[str] = [""]
        answered = [0]
        window: dict = {}

        async def drive(ws, samples: list[int]) -> None:
            send, receive, clock = ws.send_str, ws.receive, time.perf_counter_ns
            while True:
                t0 = clock()
                await send(frame)
                msg = await receive()
                answered[0] += 1
                now = time.perf_counter()
                if now >= stop_at:
                    last[0] = msg.data
                    return
                if now >= warm_until:
                    samples.append(clock() - t0)

        sampler = asyncio.ensure_future(
            _sample_window(probe, answered, warm_until, stop_at, window))
        await asyncio.gather(*(drive(ws, s) for ws, s in zip(sockets, per_socket, strict=True)))
        await sampler
        check(last[0])
        await asyncio.gather(*(ws.close() for ws in sockets))
    samples = [x for s in per_socket for x in s]
    return {**percentiles(samples), "per_second": len(samples) / seconds,
            "connections": connections, **window,
            **({"primed_at": primed_at} if prime else {})}


async def idle(url: str, key: str, connections: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        gate = asyncio.Semaphore(200)  # don't overrun the server's listen backlog

        async def one():
            async with gate:
                return await open_authenticated(session, url, key)

        sockets = await asyncio.gather(*(one() for _ in range(connections)))
        print(json.dumps({"ready": len(sockets)}), flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the orchestrator says so
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


# --- picows: callbacks, no coroutine per message -----------------------------------------

def _picows_client(key: bytes, on_answer):
    """A picows listener class: sends ``key`` once connected, sets ``authenticated`` on the
    answer, then hands every text frame to ``on_answer(listener, frame, now_ns)`` (the frame
    is valid during the call only), and a close as ``on_answer(listener, None, now_ns)``."""
    from picows import WSListener, WSMsgType

    text, close = WSMsgType.TEXT, WSMsgType.CLOSE
    clock = time.perf_counter_ns

    class Client(WSListener):
        def __init__(self):
            self.transport = None
            self.authenticated = asyncio.get_running_loop().create_future()
            self.sent_ns = 0
            self.samples: list[int] = []
            self.last = b""

        def on_ws_connected(self, transport) -> None:
            self.transport = transport
            transport.send(text, key)

        def on_ws_frame(self, transport, frame) -> None:
            now = clock()
            kind = frame.msg_type
            if kind is text:
                if self.authenticated.done():
                    on_answer(self, frame, now)
                else:
                    answer = frame.get_payload_as_bytes()
                    if b'"success"' not in answer:
                        self.authenticated.set_exception(
                            RuntimeError(f"authentication failed: {answer!r}"))
                    else:
                        self.authenticated.set_result(None)
            elif kind is close:
                reason = frame.get_close_reason()
                if not self.authenticated.done():
                    self.authenticated.set_exception(RuntimeError(f"closed: {reason}"))
                on_answer(self, None, now)  # tells the run it is over for this one

        def send(self, payload: bytes) -> None:
            self.sent_ns = clock()
            self.transport.send(text, payload)

    return Client


async def _picows_open(client_class, url: str, connections: int) -> list:
    from picows import ws_connect

    gate = asyncio.Semaphore(200)

    async def one():
        async with gate:
            _transport, listener = await ws_connect(client_class, url,
                                                    max_frame_size=1 << 24)
            await listener.authenticated
            return listener

    return list(await asyncio.gather(*(one() for _ in range(connections))))


async def _picows_close(listeners: list) -> None:
    from picows import WSCloseCode

    for listener in listeners:
        listener.transport.send_close(WSCloseCode.OK)
        listener.transport.disconnect()
    await asyncio.gather(*(listener.transport.wait_disconnected() for listener in listeners),
                         return_exceptions=True)


async def picows_latency(url: str, key: str, frame: str, requests: int, warmup: int,
                         min_seconds: float = 0.0, probe: CpuProbe | None = None) -> dict:
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    payload = frame.encode()
    state = {"warm": warmup, "until": 0, "before": None, "started": 0}
    clock = time.perf_counter_ns

    def begin(listener) -> None:
        state["before"] = probe.snap() if probe else None
        state["started"] = clock()
        state["until"] = state["started"] + int(min_seconds * 1e9)

    def on_answer(listener, frame, now: int) -> None:
        if frame is None:
            if not finished.done():
                finished.set_exception(RuntimeError("the server closed the connection"))
            return
        if state["warm"] > 0:
            state["warm"] -= 1
            if state["warm"] == warmup - 1:
                check(frame.get_payload_as_bytes())  # the first answer
            if state["warm"] == 0:
                begin(listener)
        else:
            samples = listener.samples
            samples.append(now - listener.sent_ns)
            if len(samples) >= requests and now >= state["until"]:
                ended = clock()
                after = probe.snap() if probe else None
                listener.last = frame.get_payload_as_bytes()
                finished.set_result((ended, after))
                return
        listener.send(payload)

    client = _picows_client(key.encode(), on_answer)
    [listener] = await _picows_open(client, url, 1)
    if warmup == 0:
        begin(listener)
    listener.send(payload)
    ended, after = await finished
    check(listener.last)
    await _picows_close([listener])
    samples = listener.samples
    result = {**percentiles(samples), "per_second": len(samples) / ((ended - state["started"])
                                                                    / 1e9)}
    if probe:
        result["cpu"] = probe.between(state["before"], after, len(samples))
    return result


async def picows_throughput(url: str, key: str, frame: str, connections: int, seconds: float,
                            probe: CpuProbe | None = None, prime: bool = False) -> dict:
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    primed = loop.create_future()
    payload = frame.encode()
    answered = [0]
    running = [connections]
    bounds = {"warm": 0, "stop": 0}

    def on_answer(listener, frame, now: int) -> None:
        if frame is None:
            for waiting in (primed, finished):
                if not waiting.done():
                    waiting.set_exception(RuntimeError("the server closed a connection"))
            return
        if not primed.done():
            primed.set_result(frame.get_payload_as_bytes())
            return
        answered[0] += 1
        if now >= bounds["stop"]:
            listener.last = frame.get_payload_as_bytes()
            running[0] -= 1
            if running[0] == 0 and not finished.done():
                finished.set_result(None)
            return
        if now >= bounds["warm"]:
            listener.samples.append(now - listener.sent_ns)
        listener.send(payload)

    client = _picows_client(key.encode(), on_answer)
    listeners = await _picows_open(client, url, connections)
    primed_at = None
    if prime:  # one answer first (a model's load), then the clock starts
        primed_at = time.time()
        listeners[0].send(payload)
        check(await primed)
    else:
        primed.set_result(None)
    warm_until = time.perf_counter() + min(1.0, seconds / 3)
    stop_at = warm_until + seconds
    # perf_counter and perf_counter_ns are the same clock
    bounds["warm"], bounds["stop"] = int(warm_until * 1e9), int(stop_at * 1e9)
    window: dict = {}
    sampler = asyncio.ensure_future(_sample_window(probe, answered, warm_until, stop_at, window))
    for listener in listeners:
        listener.send(payload)
    await finished
    await sampler
    for listener in listeners:
        check(listener.last)
    await _picows_close(listeners)
    samples = [x for listener in listeners for x in listener.samples]
    return {**percentiles(samples), "per_second": len(samples) / seconds,
            "connections": connections, **window,
            **({"primed_at": primed_at} if prime else {})}


# --- the first prediction after a server starts ------------------------------------------

async def first(url: str, key: str, frame: str, wait: float, client: str,
                timeout: float = 120.0) -> dict:
    """Poll until the port accepts, wait ``wait`` s, then the first prediction (module doc)."""
    parts = urlsplit(url)
    address = (parts.hostname, parts.port)
    if client == "picows":
        import picows  # noqa: F401  (imported before the server listens, not after)
    session = aiohttp.ClientSession() if client == "aiohttp" else None
    print(json.dumps({"ready": True}), flush=True)
    deadline = time.perf_counter() + timeout
    while True:
        probe = socket.socket()
        try:
            probe.connect(address)
            break
        except OSError:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"nothing listened on {address}") from None
            time.sleep(0.001)
        finally:
            probe.close()
    listening, listening_at = time.perf_counter(), time.time()
    if wait:
        await asyncio.sleep(wait)
    connecting = time.perf_counter()
    answers: list[bytes] = []
    rounds: list[float] = []
    answered = 0.0  # perf_counter() at the first answer
    if client == "picows":
        loop = asyncio.get_running_loop()
        waiting: list = [None]

        def on_answer(listener, frame, now: int) -> None:
            if waiting[0] is not None and not waiting[0].done():
                if frame is None:
                    waiting[0].set_exception(RuntimeError("the server closed the connection"))
                else:
                    waiting[0].set_result(frame.get_payload_as_bytes())

        [listener] = await _picows_open(_picows_client(key.encode(), on_answer), url, 1)
        authenticated = time.perf_counter()
        for _ in range(21):
            waiting[0] = loop.create_future()
            t0 = time.perf_counter()
            listener.send(frame.encode())
            answers.append(await waiting[0])
            rounds.append(time.perf_counter() - t0)
            answered = answered or time.perf_counter()
        await _picows_close([listener])
    else:
        async with session:
            ws = await open_authenticated(session, url, key)
            authenticated = time.perf_counter()
            for _ in range(21):
                t0 = time.perf_counter()
                await ws.send_str(frame)
                answers.append((await ws.receive()).data.encode())
                rounds.append(time.perf_counter() - t0)
                answered = answered or time.perf_counter()
            await ws.close()
    check(answers[0])
    return {
        "listening_at": listening_at, "wait_s": wait,
        "from_listening_ms": (answered - listening) * 1000,
        "from_connect_ms": (answered - connecting) * 1000,
        "connect_auth_ms": (authenticated - connecting) * 1000,
        "first_round_trip_ms": rounds[0] * 1000,
        "next_median_us": statistics.median(rounds[1:]) * 1e6,
        "next_max_us": max(rounds[1:]) * 1e6,
        "next_us": [r * 1e6 for r in rounds[1:]],
        "answer": answers[0].decode()[:200],
    }


async def accepts(url: str, key: str, concurrency: int, seconds: float,
                  probe: CpuProbe | None = None) -> dict:
    """Bots reconnecting in a storm: ``concurrency`` clients each connect, authenticate (the
    server's durable charge comes before its answer), close, and again, for ``seconds``.
    Reports accepted connections per second and the time from connecting to ``Valid API
    key.``; with picows, the server's CPU per accept too."""
    from picows import WSCloseCode, ws_connect

    client_class = _picows_client(key.encode(), lambda *_: None)
    samples: list[int] = []
    clock = time.perf_counter_ns
    stop_at = clock() + int(seconds * 1e9)

    async def one_bot() -> None:
        while clock() < stop_at:
            started = clock()
            transport, listener = await ws_connect(client_class, url)
            await listener.authenticated
            samples.append(clock() - started)
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
            await transport.wait_disconnected()

    before = probe.snap() if probe else None
    began = clock()
    await asyncio.gather(*(one_bot() for _ in range(concurrency)))
    elapsed = (clock() - began) / 1e9
    after = probe.snap() if probe else None
    result = {**percentiles(samples), "per_second": len(samples) / elapsed,
              "concurrency": concurrency}
    if probe:
        result["cpu"] = probe.between(before, after, len(samples))
    return result


def _client(name: str) -> str:
    if name == "picows":
        try:
            import picows  # noqa: F401
        except ImportError:
            sys.exit("--client picows: picows is not installed (pip install picows)")
    return name


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["latency", "throughput", "idle", "first", "accepts"])
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("frame", nargs="?", default="")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--min-seconds", type=float, default=0.0,
                        help="latency: go on past --requests until this long")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--wait", type=float, default=0.0, help="first: after listening")
    parser.add_argument("--prime", action="store_true",
                        help="throughput: one answer before the clock starts (a model's load); "
                        "the result's primed_at is when it was asked (epoch seconds)")
    parser.add_argument("--client", choices=["aiohttp", "picows"], default="aiohttp")
    parser.add_argument("--cpu-pid", type=int, help="measure this process's CPU (module doc)")
    args = parser.parse_args()
    raise_fd_limit()
    client = _client(args.client)
    probe = CpuProbe(args.cpu_pid) if args.cpu_pid else None
    new_loop = None
    if client == "picows":
        try:
            import uvloop

            new_loop = uvloop.new_event_loop
        except ImportError:
            pass

    def run(coroutine):
        if new_loop is None:
            return asyncio.run(coroutine)
        loop = new_loop()
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(coroutine)
        finally:
            loop.close()

    if args.mode == "latency":
        call = picows_latency if client == "picows" else latency
        result = run(call(args.url, args.key, args.frame, args.requests, args.warmup,
                          args.min_seconds, probe))
    elif args.mode == "throughput":
        call = picows_throughput if client == "picows" else throughput
        result = run(call(args.url, args.key, args.frame, args.connections, args.seconds,
                          probe, args.prime))
    elif args.mode == "accepts":
        result = run(accepts(args.url, args.key, args.connections, args.seconds, probe))
    elif args.mode == "first":
        result = run(first(args.url, args.key, args.frame, args.wait, client))
    else:
        asyncio.run(idle(args.url, args.key, args.connections))
        return
    result["client"] = client
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
