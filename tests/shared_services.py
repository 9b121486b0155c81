"""The machine's PostgreSQL and Redis, for tests of the stores that several nodes share.

Every machine of this project runs PostgreSQL 15 (127.0.0.1:5432, trust auth, database
``test``) and Redis 7 (127.0.0.1:6379); ``NEMBER_TEST_POSTGRES`` and ``NEMBER_TEST_REDIS``
point elsewhere. Each test gets a database of its own (created empty, dropped after) and a
Redis key prefix of its own, so tests never see each other's rows. Without the service a test
skips with the reason, except in CI (``CI=true``), where a missing service is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

POSTGRES = os.environ.get("NEMBER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("NEMBER_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _listening(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1",
                                       parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def require(service: str, url: str, default_port: int) -> None:
    """Skip (fail in CI) unless ``service`` answers at ``url``."""
    if _listening(url, default_port):
        return
    message = f"{service} is not reachable at {url}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI must run it (.ci/run starts it)", pytrace=False)
    pytest.skip(message)


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """The DSN of a new, empty database on the machine's PostgreSQL, dropped after."""
    require("PostgreSQL", POSTGRES, 5432)
    name = f"nember_test_{secrets.token_hex(4)}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(POSTGRES, name)
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def database_for_processes() -> Iterator[str]:
    """``fresh_database`` outside an event loop: for module fixtures that start servers."""
    require("PostgreSQL", POSTGRES, 5432)
    name = f"nember_test_{secrets.token_hex(4)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(POSTGRES, name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.asynccontextmanager
async def fresh_redis_prefix() -> AsyncIterator[str]:
    """A key prefix of its own on the machine's Redis; its keys are deleted after."""
    import redis.asyncio as redis

    require("Redis", REDIS, 6379)
    prefix = f"nember-test-{secrets.token_hex(4)}:"
    try:
        yield prefix
    finally:
        client = redis.from_url(REDIS)
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


@pytest.fixture
async def postgres_dsn() -> AsyncIterator[str]:
    """The DSN of a new, empty database, dropped after the test."""
    async with fresh_database() as dsn:
        yield dsn


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """The machine's Redis; use with ``redis_prefix`` so that tests never share keys."""
    require("Redis", REDIS, 6379)
    yield REDIS


@pytest.fixture
async def redis_prefix(redis_url) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted after the test."""
    async with fresh_redis_prefix() as prefix:
        yield prefix


@contextlib.contextmanager
def redis_prefix_for_processes() -> Iterator[str]:
    """``fresh_redis_prefix`` outside an event loop: for module fixtures that start servers."""
    import redis

    require("Redis", REDIS, 6379)
    prefix = f"nember-test-{secrets.token_hex(4)}:"
    try:
        yield prefix
    finally:
        client = redis.from_url(REDIS)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


# Servers of a test's own, on free ports, for the tests that stop, pause and restart a store
# (the machine's shared ones above must never be stopped). Without the binaries a test skips,
# except in CI (CI=true), where that is a failure.

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _require_binary(path: str | None, what: str) -> None:
    if path is not None and os.path.exists(path):
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing; CI must install it", pytrace=False)
    pytest.skip(f"{what} is not installed")


class OwnRedis:
    """``redis-server`` on a free port; ``persist`` keeps its data across restarts (SHUTDOWN
    SAVE and an RDB file), else it comes back empty."""

    def __init__(self, folder: Path, persist: bool = False):
        from tests.harness import free_port

        _require_binary(REDIS_SERVER, "redis-server")
        self.folder, self.persist = folder, persist
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder), "--logfile", "redis.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self._answers():
            assert self.process.poll() is None, (self.folder / "redis.log").read_text()
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def _client(self):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries: their back-off would only slow the polling down.
        return redis.Redis(port=self.port, socket_timeout=5, retry=Retry(NoBackoff(), 0))

    def _answers(self) -> bool:
        import redis

        try:
            with self._client() as client:
                return client.ping()
        except redis.ConnectionError:
            return False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.persist:
            with self._client() as client:
                client.shutdown(save=True)
        else:
            self.process.terminate()
        self.process.wait(10)

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.running:
            self.process.kill()
            self.process.wait(10)


def _postgres_bin() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: on the PATH, else Debian's newest."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    folders = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")
               if (Path(p) / "initdb").exists()]
    folders.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return folders[-1] if folders else None


class OwnPostgres:
    """A throwaway PostgreSQL cluster (trust auth, user ``postgres``) on a free port of
    127.0.0.1, in a folder of its own, removed by ``close``.

    ``initdb`` and the server refuse to run as root: as root (CI's containers) they run as the
    ``postgres`` system user, in a folder it owns under /tmp (pytest's folders are root's
    alone). ``stop`` keeps the data: ``start`` again brings the same database back on the same
    port, as a restarted server would.
    """

    def __init__(self) -> None:
        from tests.harness import free_port

        folder = _postgres_bin()
        _require_binary(str(folder / "initdb") if folder else None, "PostgreSQL (initdb)")
        self.bin = folder
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            _require_binary(shutil.which("runuser"), "runuser (to run initdb as postgres)")
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                _require_binary(None, "the postgres system user (initdb refuses root)")
        self.folder = Path(tempfile.mkdtemp(prefix="nember-pg-"))
        if self.as_postgres:
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._initialised = False
        self._paused: list[int] = []

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, cwd=self.folder, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise AssertionError(f"{program} {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}{result.stderr}{log}")

    def start(self) -> None:
        """Start the server (creating the cluster the first time); returns once it accepts
        connections."""
        if not self._initialised:
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                      "-E", "UTF8", "--locale=C", "--no-sync")
            self._initialised = True
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off")  # a test's data: speed over crash safety
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "30", "start")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def stop(self, mode: str = "immediate") -> None:
        """``immediate``: as a crash (every connection dropped, no checkpoint); ``fast``: a
        clean shutdown."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def _processes(self) -> list[int]:
        """The postmaster's pid, then its children's (the backends and helpers)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
            if int(fields[1]) == postmaster:
                children.append(int(Path(stat).parent.name))
        return [postmaster, *children]

    def pause(self) -> None:
        """Hang the server (SIGSTOP every process of it): connections stay open and bytes
        are accepted, and nothing answers, as a database stuck on its disk. Linux only."""
        self._paused = self._processes()  # the postmaster first: it forks no more
        for pid in self._paused:
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in reversed(self._paused):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._paused = []

    def close(self) -> None:
        try:
            self.resume()
            if self.running:
                self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
