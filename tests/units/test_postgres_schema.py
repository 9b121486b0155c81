"""The postgres plugin's start: versioned migrations (nodes starting at once, `migrate: false`,
`nember db upgrade`), one pool per DSN, options, and a clear line when something is missing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import attrs
import pytest

# The postgres extra is optional (tox -e minimal runs without it).
asyncpg = pytest.importorskip("asyncpg")

import structlog
from nember_postgres import billing as pg_billing
from nember_postgres import db as pg_db
from nember_postgres import job_board, key_store, model_store
from nember_postgres.db import Database, open_database
from nember_postgres.key_store import PostgresKeyStore
from nember_postgres.migrations import prepare, upgrade
from nember_postgres.options import PostgresOptions, PostgresStoreError, redact

from nember_core.app.nember import Nember
from nember_core.errors import ConfigError
from tests.harness import run_cli, write_config

COMPONENTS = {module.COMPONENT: len(module.MIGRATIONS)
              for module in (key_store, pg_billing, model_store, job_board)}


async def own_pool(dsn: str) -> Database:
    """A database handle on a pool of its own: another node's."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)

    async def release():
        await pool.close()

    return Database(pool, 5.0, release)


async def versions(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return dict(await conn.fetch("SELECT component, version FROM nember_schema"))
    finally:
        await conn.close()


# Scripts that fail if run twice, and log each run: every one must run exactly once.
SCRIPTS = [
    "CREATE TABLE t_log (script int); INSERT INTO t_log VALUES (1); CREATE TABLE t (a int)",
    "INSERT INTO t_log VALUES (2); ALTER TABLE t ADD COLUMN b int",
    "INSERT INTO t_log VALUES (3); CREATE TABLE t2 (c int); SELECT pg_sleep(0.05)",
]


async def test_nodes_starting_at_once_run_each_migration_exactly_once(postgres_dsn):
    first = await own_pool(postgres_dsn)
    try:
        assert (await upgrade(first, "test", SCRIPTS[:1])).after == 1  # an older node's
    finally:
        await first.close()
    databases = [await own_pool(postgres_dsn) for _ in range(8)]
    try:
        states = await asyncio.gather(*(upgrade(db, "test", SCRIPTS) for db in databases))
    finally:
        for db in databases:
            await db.close()
    assert {state.after for state in states} == {3}
    assert min(state.before for state in states) == 1  # they may share the work...
    conn = await asyncpg.connect(postgres_dsn)
    try:
        # ...and each script ran once, in order
        assert [r["script"] for r in await conn.fetch("SELECT script FROM t_log")] == [1, 2, 3]
    finally:
        await conn.close()
    assert await versions(postgres_dsn) == {"test": 3}


async def test_a_failing_migration_rolls_back_alone(postgres_dsn):
    db = await own_pool(postgres_dsn)
    try:
        with pytest.raises(PostgresStoreError, match="preparing the schema 'test' failed"):
            await prepare(db, "test", [SCRIPTS[0], "CREATE TABLE t3 (a int); SELEC oops"], True)
        assert await versions(postgres_dsn) == {"test": 1}
        assert await db.fetchval("SELECT to_regclass('t3')") is None  # nothing of script 2
        assert await db.fetchval("SELECT to_regclass('t')") is not None  # script 1 stays
    finally:
        await db.close()


async def test_stores_of_several_processes_starting_at_once_create_the_schema_once(
        postgres_dsn):
    code = (
        "import asyncio, sys\n"
        "from nember_postgres.options import PostgresOptions\n"
        "from nember_postgres.key_store import PostgresKeyStore\n"
        "from nember_postgres.billing import PostgresBillingLedger\n"
        "from nember_postgres.model_store import PostgresModelStore\n"
        "from nember_postgres.job_board import PostgresJobBoard\n"
        "async def main():\n"
        "    options = PostgresOptions(dsn=sys.argv[1])\n"
        "    for kind in (PostgresKeyStore, PostgresBillingLedger, PostgresModelStore,\n"
        "                 PostgresJobBoard):\n"
        "        await (await kind.open(options)).close()\n"
        "asyncio.run(main())\n"
    )
    processes = [subprocess.Popen([sys.executable, "-c", code, postgres_dsn],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(6)]
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    assert await versions(postgres_dsn) == COMPONENTS


async def test_migrate_false_refuses_an_older_schema_until_it_is_upgraded(postgres_dsn):
    options = PostgresOptions(dsn=postgres_dsn, migrate=False)
    with pytest.raises(PostgresStoreError,
                       match=r"schema 'keys' is at version 0, this nember needs version \d+: "
                             r"run `nember db upgrade`"):
        await PostgresKeyStore.open(options)
    assert not pg_db._pools  # the refused store gave its pool back
    await (await PostgresKeyStore.open(PostgresOptions(dsn=postgres_dsn))).close()
    store = await PostgresKeyStore.open(options)
    try:
        assert store.schema.after == COMPONENTS["keys"]
    finally:
        await store.close()


async def test_roles_on_one_dsn_share_one_pool_closed_with_the_last(postgres_dsn):
    options = PostgresOptions(dsn=postgres_dsn, pool_size=3)
    stores = [await kind.open(options) for kind in (
        PostgresKeyStore, pg_billing.PostgresBillingLedger, model_store.PostgresModelStore,
        job_board.PostgresJobBoard)]
    other = await open_database(attrs.evolve(options, pool_size=2))  # not the same pool
    try:
        assert len(pg_db._pools) == 2
        (pool,) = {store._db.pool for store in stores}
        assert pool.get_max_size() == 3
        for store in stores[:-1]:
            await store.close()
            await store.close()  # twice: must not give back another store's share
        assert not pool.is_closing()
        await stores[-1].close()
        assert pool.is_closing()
    finally:
        await other.close()
    assert not pg_db._pools


async def test_db_upgrade_through_the_cli_creates_then_finds_nothing_to_do(
        postgres_dsn, tmp_path):
    section = {"plugin": "postgres", "dsn": postgres_dsn, "migrate": False}
    config = write_config(tmp_path, key_store=section, billing=section, model_store=section,
                          jobs=section)
    refused = run_cli(config, "keys", "list", "--account", "a@example.com", check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1].endswith(
        "run `nember db upgrade` (or set migrate: true)")
    # Nodes (here: CLIs) upgrading at once: each component is created once.
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: run_cli(config, "db", "upgrade"), range(3)))
    outputs = [r.stdout for r in results]
    assert sum("schema 'keys' created (version 1)" in out for out in outputs) == 1
    again = run_cli(config, "db", "upgrade").stdout.splitlines()
    assert again == [f"{role} (postgres): schema {component!r} is up to date (version "
                     f"{COMPONENTS[component]})"
                     for role, component in (("key_store", "keys"), ("billing", "billing"),
                                             ("model_store", "models"), ("jobs", "jobs"))]
    assert await versions(postgres_dsn) == COMPONENTS
    run_cli(config, "accounts", "create", "a@example.com")  # migrate: false now starts


def test_db_upgrade_without_a_postgres_store_says_so(tmp_path):
    result = run_cli(write_config(tmp_path), "db", "upgrade")
    assert "no configured store keeps a schema to upgrade" in result.stdout


def test_options_are_checked_with_one_line_naming_the_key(tmp_path):
    def load(**section):
        return Nember.load(str(write_config(tmp_path, key_store={"plugin": "postgres",
                                                                 **section})))

    with pytest.raises(ConfigError, match=r"key_store\.dsn: required key is missing"):
        load()
    with pytest.raises(ConfigError, match=r"key_store: dsn: expected a postgresql:// URL, got "
                                          r"'mysql://u:\*\*\*@db/x'"):
        load(dsn="mysql://u:hunter2@db/x")
    with pytest.raises(ConfigError, match="pool_size: expected an integer >= 1"):
        load(dsn="postgresql://db/x", pool_size=0)
    with pytest.raises(ConfigError, match="timeout: expected a number of seconds > 0"):
        load(dsn="postgresql://db/x", timeout=0)
    options = load(dsn="postgres://db/x").config.key_store.options
    assert (options.pool_size, options.timeout, options.migrate) == (5, 5.0, True)


async def test_the_dsn_password_stays_out_of_errors_and_logs():
    dsn = "postgresql://nember:hunter2@127.0.0.1:1/nember?password=hunter2&sslmode=disable"
    assert "hunter2" not in redact(dsn)
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(PostgresStoreError) as refused:
            await PostgresKeyStore.open(PostgresOptions(dsn=dsn, timeout=1))
    assert "cannot connect to postgresql://nember:***@127.0.0.1:1/nember" in str(refused.value)
    assert "hunter2" not in str(refused.value) and "hunter2" not in repr(logs)


def test_the_plugin_loads_without_asyncpg_and_says_how_to_install_it(tmp_path):
    config = write_config(tmp_path, key_store={"plugin": "postgres",
                                               "dsn": "postgresql://127.0.0.1/x"})
    code = (
        "import sys; sys.modules['asyncpg'] = None\n"  # as if not installed
        "from nember_core.app.cli import main\n"
        f"sys.exit(main(['--config', {str(config)!r}, 'keys', 'list', '--account', 'a@b.c']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == ("nember: error: the postgres plugin needs asyncpg: "
                                     "pip install 'nember[postgres]'")
