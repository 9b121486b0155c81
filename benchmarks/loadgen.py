"""The load generator: runs in its own process, prints one JSON line of results.

    python benchmarks/loadgen.py latency    URL KEY FRAME --requests N --warmup N
    python benchmarks/loadgen.py throughput URL KEY FRAME --connections C --seconds S
    python benchmarks/loadgen.py idle       URL KEY --connections C

``idle`` opens C authenticated connections, prints {"ready": C}, and holds them until its
standard input closes. Every connection sends one request and waits for its answer before
the next (one prediction per round trip), like a bot on a tick.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time

import aiohttp


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    n = len(ordered)

    def at(q: float) -> float:
        return ordered[min(n - 1, int(q * n))] / 1000.0  # µs

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "p999": at(0.999),
            "max": ordered[-1] / 1000.0, "count": n}


async def open_authenticated(session: aiohttp.ClientSession, url: str, key: str):
    ws = await session.ws_connect(url, compress=0, autoping=True, max_msg_size=0)
    await ws.send_str(key)
    answer = await ws.receive()
    if answer.type != aiohttp.WSMsgType.TEXT:
        raise RuntimeError(f"authentication failed: {answer}")
    return ws


async def latency(url: str, key: str, frame: str, requests: int, warmup: int) -> dict:
    async with aiohttp.ClientSession() as session:
        ws = await open_authenticated(session, url, key)
        send, receive = ws.send_str, ws.receive
        for _ in range(warmup):
            await send(frame)
            await receive()
        samples = []
        clock = time.perf_counter_ns
        started = clock()
        for _ in range(requests):
            t0 = clock()
            await send(frame)
            msg = await receive()
            samples.append(clock() - t0)
        elapsed = (clock() - started) / 1e9
        check(msg.data)
        await ws.close()
    return {**percentiles(samples), "per_second": requests / elapsed}


def check(answer: str) -> None:
    if '"error"' in answer:
        raise RuntimeError(f"the server answered an error: {answer}")


async def throughput(url: str, key: str, frame: str, connections: int, seconds: float) -> dict:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0)
    ) as session:
        sockets = await asyncio.gather(
            *(open_authenticated(session, url, key) for _ in range(connections))
        )
        warm_until = time.perf_counter() + min(1.0, seconds / 3)
        stop_at = warm_until + seconds
        per_socket: list[list[int]] = [[] for _ in sockets]
        last: list[str] = [""]

        async def drive(ws, samples: list[int]) -> None:
            send, receive, clock = ws.send_str, ws.receive, time.perf_counter_ns
            while True:
                t0 = clock()
                await send(frame)
                msg = await receive()
                now = time.perf_counter()
                if now >= stop_at:
                    last[0] = msg.data
                    return
                if now >= warm_until:
                    samples.append(clock() - t0)

        await asyncio.gather(*(drive(ws, s) for ws, s in zip(sockets, per_socket, strict=True)))
        check(last[0])
        await asyncio.gather(*(ws.close() for ws in sockets))
    samples = [x for s in per_socket for x in s]
    return {**percentiles(samples), "per_second": len(samples) / seconds,
            "connections": connections}


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["latency", "throughput", "idle"])
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("frame", nargs="?", default="")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    raise_fd_limit()
    if args.mode == "latency":
        result = asyncio.run(latency(args.url, args.key, args.frame, args.requests, args.warmup))
    elif args.mode == "throughput":
        result = asyncio.run(
            throughput(args.url, args.key, args.frame, args.connections, args.seconds)
        )
    else:
        asyncio.run(idle(args.url, args.key, args.connections))
        return
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
