"""Backup and restore in this process (the end-to-end run, with a server serving meanwhile,
is tests/e2e/test_backup.py): roles that share one SQLite file, stores elsewhere, what is
never copied."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from nember_core.app import backup
from nember_core.app.nember import Nember
from nember_core.errors import NemberError
from nember_core.records import ConnectionUsage, utcnow
from nember_core.services import TrainingRequest
from tests.harness import PASSWORD, write_config, write_prices

EMAIL = "trader@example.com"
SHARED = {"path": "shared.sqlite3"}  # relative to the config's folder


async def test_roles_sharing_one_sqlite_file_each_get_a_folder(tmp_path, capsys):
    config = write_config(tmp_path / "a", key_store=SHARED, billing=SHARED, jobs=SHARED)
    data = write_prices(tmp_path / "prices.csv", rows=60)
    nember = Nember.load(str(config))
    async with nember.services() as services:
        account = await services.accounts.create(EMAIL, PASSWORD)
        key = await services.keys.create(account.id, "bot", "predict")
        usage = ConnectionUsage(connection_id="conn_1", account_id=account.id,
                                key_id=key.key.id, remote="127.0.0.1", opened_at=utcnow())
        await services.stores.billing.charge(usage, Decimal("0.01"), "USD")
        await services.models.train(account.id, TrainingRequest(
            strat="s", family="DecisionTree", model_type="class", data=data,
            target="direction", window=2, features=["point1", "point2"]))
    # A version being written (never renamed into place) is not part of the store.
    partial = tmp_path / "a" / "data" / "models" / ".tmp" / "half-written"
    partial.mkdir(parents=True)
    (partial / "model.bin").write_bytes(b"half")

    target = tmp_path / "backup"
    assert await backup.backup(nember, target) == 0
    out = capsys.readouterr().out
    assert out.count("shared.sqlite3") == 3  # one line each for key_store, billing, jobs
    manifest = json.loads((target / "manifest.json").read_text())
    names = {entry["path"] for entry in manifest["files"]}
    assert {"key_store/shared.sqlite3", "billing/shared.sqlite3",
            "jobs/shared.sqlite3"} <= names
    assert not any("half" in name or ".tmp" in name for name in names)

    fresh = write_config(tmp_path / "b", key_store=SHARED, billing=SHARED, jobs=SHARED)
    restored = Nember.load(str(fresh))
    assert await backup.restore(restored, target, force=False) == 0
    assert "restore complete" in capsys.readouterr().out
    async with restored.services() as services:
        assert (await services.stores.key_store.authenticate(key.secret)).id == key.key.id
        assert [c.connection_id for c in await services.stores.billing.charges(account.id)] \
            == ["conn_1"]
        [meta] = await services.stores.model_store.list(account.id)
        assert meta.version == 1
    with pytest.raises(NemberError, match="add --force"):
        await backup.restore(restored, target, force=False)


async def test_stores_elsewhere_say_how_to_back_them_up(tmp_path, capsys):
    config = write_config(
        tmp_path, key_store={"plugin": "postgres", "dsn": "postgresql://nember@db/nember"},
        billing={"plugin": "postgres", "dsn": "postgresql://nember@db/nember"},
        jobs={"plugin": "postgres", "dsn": "postgresql://nember@db/nember"},
        connection_registry={"plugin": "redis", "url": "redis://cache:6379/0"})
    nember = Nember.load(str(config))
    target = tmp_path / "backup"
    with pytest.raises(NemberError, match="nothing to back up"):  # no model stored yet
        await backup.backup(nember, target)
    lines = capsys.readouterr().out.splitlines()
    assert "key_store (postgres): not backed up: in PostgreSQL: back it up with pg_dump" in lines
    assert ("connection_registry (redis): not backed up: holds only live connections: nothing "
            "to back up") in lines
    assert not target.exists()  # no partial backup left behind


async def test_backup_into_a_file_or_a_folder_that_is_not_empty(tmp_path):
    nember = Nember.load(str(write_config(tmp_path)))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NemberError, match="not a folder"):
        await backup.backup(nember, tmp_path / "file")
    with pytest.raises(NemberError, match="not empty"):
        await backup.backup(nember, tmp_path)
    with pytest.raises(NemberError, match="no such folder"):
        await backup.restore(nember, tmp_path / "nope", force=False)
