"""The PostgreSQL stores where PostgreSQL matters: several nodes at once (each a pool of its
own here), the database's clock, the model size limit, and a database that stops answering.

What every implementation of a role must do is the contract suite's (tests/contracts/).
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest

# The postgres extra is optional (tox -e minimal runs without it).
asyncpg = pytest.importorskip("asyncpg")

from nember_postgres.billing import PostgresBillingLedger
from nember_postgres.job_board import LOST, ORPHANED_AFTER, PostgresJobBoard
from nember_postgres.key_store import PostgresKeyStore
from nember_postgres.model_store import MAX_ARTIFACT_BYTES, PostgresModelStore
from nember_postgres.options import PostgresOptions

from nember_core.errors import AlreadyExists, InvalidData, StoreUnavailable
from nember_core.records import ConnectionUsage, ModelKey, ModelMeta, TrainingJob, utcnow


def node(dsn: str, name: str, **options) -> PostgresOptions:
    """Options whose DSN differs by an application name: a pool of its own, as another node's
    (one process shares one pool per DSN)."""
    separator = "&" if "?" in dsn else "?"
    return PostgresOptions(dsn=f"{dsn}{separator}application_name={name}", **options)


def usage(connection_id: str, account: str = "acct_1") -> ConnectionUsage:
    return ConnectionUsage(connection_id=connection_id, account_id=account, key_id="key_1",
                           remote="127.0.0.1", opened_at=utcnow())


def meta(strat: str = "s") -> ModelMeta:
    return ModelMeta(
        key=ModelKey("acct_1", strat, "DecisionTree", "class"), version=0, features=("a", "b"),
        window=2, target="t", classes=("down", "up"), family_version="1.5",
        params={"max_depth": 3, "criterion": "gini"}, metrics={"accuracy": 0.75, "note": None},
        samples=10, trained_at=utcnow(), training_seconds=0.25, artifact_sha256="ab" * 32,
    )


@pytest.fixture
async def nodes(postgres_dsn):
    """``open(kind, name)``: a store as node ``name`` would have it; all closed after."""
    opened = []

    async def open_store(kind, name: str = "node-1", **options):
        store = await kind.open(node(postgres_dsn, name, **options))
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close()


async def test_concurrent_charges_from_two_nodes_are_each_kept_once(nodes):
    ledgers = [await nodes(PostgresBillingLedger, f"node-{n}") for n in (1, 2)]
    await ledgers[0].charge(usage("taken"), Decimal("0.01"), "USD")
    calls = []
    for i in range(100):
        ledger = ledgers[i % 2]
        calls.append(ledger.charge(usage(f"c{i}"), Decimal("0.01"), "USD"))
        calls.append(ledger.charge(usage("taken"), Decimal("0.01"), "USD"))
        calls.append(ledgers[(i + 1) % 2].charge(usage(f"c{i}"), Decimal("0.01"), "USD"))
    results = await asyncio.gather(*calls, return_exceptions=True)
    failed = [r for r in results if isinstance(r, Exception)]
    assert len(failed) == 200 and all(isinstance(r, AlreadyExists) for r in failed)
    charged = await ledgers[1].charges("acct_1")
    assert len(charged) == 101
    assert {c.connection_id for c in charged} == {u.connection_id
                                                  for u in await ledgers[0].usage("acct_1")}
    assert sum(c.amount for c in charged) == Decimal("1.01")
    assert all(isinstance(c.amount, Decimal) for c in charged)


async def test_a_cancelled_charge_leaves_nothing_half_done(nodes):
    ledger = await nodes(PostgresBillingLedger)
    for i in range(20):  # cancelled at different points of its transaction
        charging = asyncio.create_task(ledger.charge(usage(f"x{i}"), Decimal(1), "USD"))
        for _ in range(i % 5):
            await asyncio.sleep(0)
        charging.cancel()
        await asyncio.gather(charging, return_exceptions=True)
        await ledger.charge(usage(f"ok{i}"), Decimal(1), "USD")
    charged = {c.connection_id for c in await ledger.charges("acct_1")}
    with_usage = {u.connection_id for u in await ledger.usage("acct_1")}
    assert charged == with_usage  # a charge is there with its usage row, or not at all
    assert {f"ok{i}" for i in range(20)} <= charged


async def test_charges_commit_durably_whatever_the_databases_default(nodes, postgres_dsn):
    conn = await asyncpg.connect(postgres_dsn)
    try:
        database = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{database}" SET synchronous_commit = off')
    finally:
        await conn.close()
    ledger = await nodes(PostgresBillingLedger)
    assert await ledger._db.fetchval("SHOW synchronous_commit") == "on"


async def test_amounts_keep_their_exact_decimal_value(nodes):
    ledger = await nodes(PostgresBillingLedger)
    for i, amount in enumerate(["0.01", "0.1", "12345678901234567890.123456789", "0"]):
        await ledger.charge(usage(f"c{i}"), Decimal(amount), "USD")
    assert [str(c.amount) for c in await ledger.charges("acct_1")] == [
        "0.01", "0.1", "12345678901234567890.123456789", "0"]


async def test_login_attempts_sent_at_once_from_two_nodes_stop_at_the_limit(nodes):
    stores = [await nodes(PostgresKeyStore, f"node-{n}", pool_size=8) for n in (1, 2)]
    attempts = await asyncio.gather(*(
        stores[i % 2].count_login_attempt({"email:a": 7, "ip:1": 70}, 60) for i in range(60)
    ))
    allowed = [a for a in attempts if a is not None]
    assert len(allowed) == 7
    # The address has room, another email hasn't been tried: its attempts count on their own.
    other = await asyncio.gather(*(
        stores[i % 2].count_login_attempt({"email:b": 3, "ip:1": 70}, 60) for i in range(20)
    ))
    assert sum(a is not None for a in other) == 3
    # A success forgets its attempt, everywhere: one more fits.
    await stores[0].forget_login_attempt(allowed[0])
    assert await stores[1].count_login_attempt({"email:a": 7}, 60) is not None
    assert await stores[0].count_login_attempt({"email:a": 7}, 60) is None


async def test_login_windows_run_on_the_database_clock(nodes):
    store = await nodes(PostgresKeyStore)
    assert await store.count_login_attempt({"email:a": 1}, 0.5) is not None
    assert await store.count_login_attempt({"email:a": 1}, 0.5) is None
    await asyncio.sleep(0.7)
    assert await store.count_login_attempt({"email:a": 1}, 0.5) is not None


async def test_emails_are_unique_whatever_their_case_across_nodes(nodes):
    stores = [await nodes(PostgresKeyStore, f"node-{n}") for n in (1, 2)]
    results = await asyncio.gather(
        stores[0].create_account("Trader@Example.com", "password-1"),
        stores[1].create_account("trader@example.COM", "password-2"),
        return_exceptions=True,
    )
    assert sum(isinstance(r, AlreadyExists) for r in results) == 1
    (account,) = [r for r in results if not isinstance(r, Exception)]
    assert await stores[1].account_by_email("TRADER@example.com") == account


async def test_a_session_expires_by_the_database_clock_on_every_node(nodes):
    stores = [await nodes(PostgresKeyStore, f"node-{n}") for n in (1, 2)]
    account = await stores[0].create_account("a@example.com", "password-1")
    token = await stores[0].create_session(account.id, 0.5)
    assert await stores[1].session_account(token) == account
    await asyncio.sleep(0.7)
    assert await stores[1].session_account(token) is None


async def test_model_versions_saved_at_once_by_two_nodes_are_distinct_and_never_reused(nodes):
    stores = [await nodes(PostgresModelStore, f"node-{n}") for n in (1, 2)]
    before = await stores[1].generation()
    saved = await asyncio.gather(*(stores[i % 2].save(meta(), f"v{i}".encode())
                                   for i in range(20)))
    assert sorted(m.version for m in saved) == list(range(1, 21))
    for m in saved:
        assert await stores[1].read(m) == f"v{saved.index(m)}".encode()
    assert await stores[1].generation() != before
    newest = max(saved, key=lambda m: m.version)
    await stores[0].delete(newest)
    assert (await stores[1].latest(newest.key)).version == 19
    assert (await stores[1].save(meta(), b"again")).version == 21  # 20 is never given again
    assert (await stores[0].latest_versions([newest.key]))[newest.key] == 21


async def test_meta_keeps_every_field_through_the_database(nodes):
    store = await nodes(PostgresModelStore)
    saved = await store.save(meta(), b"x")
    (listed,) = await store.list("acct_1")
    assert listed == saved == await store.latest(saved.key)
    assert listed.artifact_sha256 == "ab" * 32 and listed.params == {"max_depth": 3,
                                                                    "criterion": "gini"}


async def test_a_model_file_over_the_limit_is_refused_and_nothing_stored(nodes):
    store = await nodes(PostgresModelStore)
    generation = await store.generation()
    with pytest.raises(InvalidData, match="at most 256 MiB"):
        await store.save(meta(), bytes(MAX_ARTIFACT_BYTES + 1))
    assert await store.list("acct_1") == [] and await store.generation() == generation
    large = bytes(range(256)) * (24 * 4096)  # 24 MiB: several seconds' worth of timeout
    saved = await store.save(meta(), large)
    assert saved.version == 1 and await store.read(saved) == large


async def test_latest_versions_of_many_models_at_once(nodes):
    store = await nodes(PostgresModelStore)
    keys = []
    for i in range(30):
        for _ in range(i % 3 + 1):
            keys.append((await store.save(meta(f"s{i}"), b"x")).key)
    absent = ModelKey("acct_1", "never", "DecisionTree", "class")
    found = await store.latest_versions([*keys, absent])
    assert found == {ModelKey("acct_1", f"s{i}", "DecisionTree", "class"): i % 3 + 1
                     for i in range(30)}


async def test_a_job_its_node_stopped_writing_reads_as_failed_and_a_cancel_stays(
        nodes, postgres_dsn):
    boards = [await nodes(PostgresJobBoard, f"node-{n}") for n in (1, 2)]
    job = TrainingJob(id="job_1", account_id="acct_1", key=meta().key, created_at=utcnow(),
                      state="running", progress=0.5, stage="fitting")
    await boards[0].write([job], keep=10)
    await boards[1].request_cancel("job_1")
    await boards[0].write([job], keep=10)  # the owner's next progress write
    assert await boards[0].cancel_requested(["job_1", "job_2"]) == {"job_1"}
    assert (await boards[1].read("job_1")).state == "running"
    conn = await asyncpg.connect(postgres_dsn)  # its node died a while ago
    try:
        await conn.execute("UPDATE nember_jobs SET written_at = now() - make_interval(secs => $1)",
                           ORPHANED_AFTER + 1)
    finally:
        await conn.close()
    lost = await boards[1].read("job_1")
    assert (lost.state, lost.error) == ("failed", LOST)


async def test_job_writes_from_two_nodes_keep_the_newest(nodes):
    boards = [await nodes(PostgresJobBoard, f"node-{n}") for n in (1, 2)]

    def job(i: int) -> TrainingJob:
        return TrainingJob(id=f"job_{i:03d}", account_id="acct_1", key=meta().key,
                           created_at=utcnow(), state="running")

    jobs = [job(i) for i in range(40)]
    await asyncio.gather(*(boards[i % 2].write([jobs[i]], keep=25) for i in range(40)))
    await boards[0].write([], keep=25)
    kept = [j.id for j in jobs if await boards[1].read(j.id) is not None]
    assert kept == [j.id for j in jobs[-25:]]


class FreezingProxy:
    """A TCP proxy to PostgreSQL that can stop passing bytes: a database that hangs."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.frozen = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader, writer):
        upstream_reader, upstream_writer = await asyncio.open_connection(self.host, self.port)
        await asyncio.gather(self._pipe(reader, upstream_writer),
                             self._pipe(upstream_reader, writer), return_exceptions=True)

    async def _pipe(self, reader, writer):
        try:
            while data := await reader.read(65536):
                while self.frozen.is_set():
                    await asyncio.sleep(0.05)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def close(self):
        self.server.close()


@pytest.fixture
async def freezable(postgres_dsn):
    """A FreezingProxy in front of the test database, and the DSN that goes through it."""
    from urllib.parse import urlsplit

    parts = urlsplit(postgres_dsn)
    proxy = FreezingProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await proxy.start()
    userinfo, at, _ = parts.netloc.rpartition("@")
    yield proxy, parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{port}").geturl()
    proxy.frozen.clear()
    await proxy.close()


async def test_a_hanging_database_fails_calls_within_the_timeout_and_is_used_again(
        freezable):
    proxy, dsn = freezable
    store = await PostgresKeyStore.open(PostgresOptions(dsn=dsn, timeout=1.0))
    try:
        account = await store.create_account("a@example.com", "password-1")
        proxy.frozen.set()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):  # the database's fault, said so: 503, 1013
            await store.account_by_email("a@example.com")
        assert time.monotonic() - started < 3  # the timeout, not a hang
        proxy.frozen.clear()
        deadline = time.monotonic() + 5  # PROTOCOL §5: back within 5 s of the store's return
        while True:
            try:
                assert await store.account_by_email("a@example.com") == account
                break
            except (asyncio.TimeoutError, OSError, asyncpg.PostgresError,
                    asyncpg.InterfaceError):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
    finally:
        proxy.frozen.clear()
        await store.close()


async def test_key_look_ups_queued_behind_a_hanging_one_fail_within_their_own_timeout(
        freezable):
    """A storm's look-ups share one query; those that arrive while it hangs wait no longer
    than the store's timeout for their own answer, and the store serves again afterwards."""
    proxy, dsn = freezable
    store = await PostgresKeyStore.open(PostgresOptions(dsn=dsn, timeout=1.0))
    try:
        account = await store.create_account("a@example.com", "password-1")
        made = await store.create_key(account.id, "bot", "predict")
        assert await store.authenticate(made.secret) == made.key
        proxy.frozen.set()
        first = asyncio.ensure_future(store.authenticate(made.secret))
        await asyncio.sleep(0.2)  # its query hangs in the database
        started = time.monotonic()
        later = await asyncio.gather(*(store.authenticate(made.secret) for _ in range(20)),
                                     return_exceptions=True)
        # Not the hanging query's timeout and then their own (~1.8 s): their own only.
        assert time.monotonic() - started < 1.5
        assert all(isinstance(outcome, StoreUnavailable) for outcome in later)
        with pytest.raises(StoreUnavailable):
            await first
        proxy.frozen.clear()
        deadline = time.monotonic() + 5
        while True:
            try:
                assert await store.authenticate(made.secret) == made.key
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
    finally:
        proxy.frozen.clear()
        await store.close()


async def test_connections_the_server_dropped_are_replaced(nodes, postgres_dsn):
    store = await nodes(PostgresKeyStore)
    account = await store.create_account("a@example.com", "password-1")
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE application_name = 'node-1'")
    finally:
        await conn.close()
    await asyncio.sleep(0.1)
    assert await store.account_by_email("a@example.com") == account
