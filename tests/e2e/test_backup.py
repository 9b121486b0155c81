"""`nember backup DIR` while a server serves, and `nember restore DIR` into a fresh data_dir:
the same keys, models, ledger and version numbers; damaged or partial backups refused."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import stat
import subprocess
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from tests.harness import NEMBER, run_cli, write_config, write_prices
from tests.helpers import ask, authed, request

pytestmark = pytest.mark.e2e  # real nember processes: `pytest -m e2e`

EMAIL = "trader@example.com"
POINTS = [
    [{"point1": 3, "point2": 2}, {"point1": 1, "point2": 3}],
    [{"point1": -1.5, "point2": 0.2}, {"point1": 0.7, "point2": -2}],
    [{"point1": 0.1, "point2": 0.1}, {"point1": -0.3, "point2": 1.4}],
]


def charged(data_dir: Path) -> set[str]:
    with closing(sqlite3.connect(data_dir / "billing.sqlite3")) as db:
        return {row[0] for row in db.execute("SELECT connection_id FROM charges")}


def train(config: Path, data: Path, model_type: str) -> str:
    target = "direction" if model_type == "class" else "move"
    return run_cli(config, "train", "--account", EMAIL, "--strat", "example_strategy",
                   "--model", "DecisionTree", "--type", model_type, "--data", str(data),
                   "--target", target, "--window", "2", "--features", "point1,point2").stdout


async def predictions(url: str, key: str) -> list:
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, url, key)
        found = []
        for model_type in ("class", "reg"):
            for points in POINTS:
                answer = await ask(ws, request(model_type=model_type, DataPoints=points))
                assert answer["type"] == "success", answer
                found.append((model_type, answer["prediction"]))
        await ws.close()
    return found


async def backup_while_serving(url: str, key: str, config: Path, target: Path):
    """Run `nember backup` while one bot keeps predicting and new connections keep arriving;
    the charges committed before it started and after it ended, and how busy it was."""
    stop = asyncio.Event()
    counts = {"predictions": 0, "connections": 0}

    async def bot(session):
        ws = await authed(session, url, key)
        while not stop.is_set():
            answer = await ask(ws, request())
            assert answer["type"] == "success", answer
            counts["predictions"] += 1
            # Steady, under the per-connection rate limit (1,000 a second) on a fast machine.
            await asyncio.sleep(0.002)
        await ws.close()

    async def newcomers(session):
        while not stop.is_set():
            ws = await authed(session, url, key)  # charged before "Valid API key."
            counts["connections"] += 1
            await ws.close()

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(bot(session)), asyncio.create_task(newcomers(session))]
        try:
            await asyncio.sleep(0.3)
            before = dict(counts)
            charged_before = charged(config.parent / "data")
            process = await asyncio.create_subprocess_exec(
                NEMBER, "--config", str(config), "backup", str(target),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = await process.communicate()
            charged_after = charged(config.parent / "data")
            during = {name: counts[name] - before[name] for name in counts}
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    assert process.returncode == 0, err.decode()
    return out.decode(), charged_before, charged_after, during


async def api(url: str, key: str, method: str, path: str):
    base = url.replace("ws://", "http://").removesuffix("/ws")
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as session:
        async with session.request(method, base + path, headers=headers) as response:
            assert response.status < 300, await response.text()
            return await response.json()


@pytest.fixture(scope="module")
def original(tmp_path_factory, module_servers):
    """A data_dir with an account, a key, a revoked key, DecisionTree class (v1; v2 trained,
    then deleted) and reg (v1); its server; a backup taken while it served."""
    folder = tmp_path_factory.mktemp("original")
    config = write_config(folder)
    data = write_prices(folder / "prices.csv")
    run_cli(config, "accounts", "create", EMAIL)
    key = run_cli(config, "keys", "create", "--account", EMAIL, "--name", "bot",
                  "--scope", "manage").stdout.splitlines()[-1]
    revoked = run_cli(config, "keys", "create", "--account", EMAIL,
                      "--name", "old").stdout.splitlines()[-1]
    run_cli(config, "keys", "revoke", revoked)
    for model_type in ("class", "reg", "class"):
        train(config, data, model_type)
    server = module_servers(config)

    async def scenario():
        models = (await api(server.url, key, "GET", "/api/models"))["items"]
        doomed = [m["id"] for m in models if m["type"] == "class" and m["version"] == 2]
        assert len(doomed) == 1
        await api(server.url, key, "DELETE", f"/api/models/{doomed[0]}")
        before = await predictions(server.url, key)  # class v1 and reg v1
        return before, await backup_while_serving(server.url, key, config, folder / "backup")

    answers, (out, charged_before, charged_after, during) = asyncio.run(scenario())
    return SimpleNamespace(folder=folder, config=config, data=data, key=key, revoked=revoked,
                           server=server, answers=answers, backup=folder / "backup",
                           output=out, charged_before=charged_before,
                           charged_after=charged_after, during=during)


def test_backup_says_what_it_copied_per_role(original):
    lines = original.output.splitlines()
    assert [line.split(" ")[0] for line in lines[:-1]] == [
        "key_store", "billing", "model_store", "connection_registry", "jobs"]
    assert "keys.sqlite3" in lines[0] and "1 file" in lines[0]
    assert "2 versions of 2 models" in lines[2]
    assert lines[3] == ("connection_registry (sqlite): not backed up: holds only live "
                        "connections: nothing to back up")
    assert lines[-1].startswith(f"backup complete: {original.backup}: ")
    # It ran while the server was busy: a bot predicting, new connections charged.
    assert original.during["predictions"] > 0 and original.during["connections"] > 0
    manifest = json.loads((original.backup / "manifest.json").read_text())
    assert set(manifest["roles"]) == {"key_store", "billing", "model_store", "jobs"}
    assert {f["path"] for f in manifest["files"]} >= {
        "key_store/keys.sqlite3", "billing/billing.sqlite3", "jobs/jobs.sqlite3"}
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in manifest["files"]
               if not f["path"].endswith(".generation"))
    assert not any("/.tmp" in f["path"] for f in manifest["files"])


def assert_private(data_dir: Path) -> None:
    """The data_dir, the restored files and folders: this user's only."""
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    restored = [data_dir / f"{name}.sqlite3" for name in ("keys", "billing", "jobs")]
    for path in [*restored, data_dir / "models", *(data_dir / "models").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


async def first_answer(url: str, key: str) -> dict:
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.send_str(key)
        return json.loads(await ws.receive_str(timeout=10))


def one_line_error(result) -> str:
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def test_a_fresh_data_dir_restored_serves_the_same_keys_models_and_ledger(
        original, tmp_path, servers):
    config = write_config(tmp_path / "restored")
    data_dir = tmp_path / "restored" / "data"
    out = run_cli(config, "restore", str(original.backup)).stdout
    assert [line.split(" ")[0] for line in out.splitlines()] == [
        "key_store", "billing", "model_store", "jobs", "restore"]
    assert "2 versions of 2 models" in out
    assert_private(data_dir)
    # The ledger: every charge committed before the backup began, none made after it ended.
    restored = charged(data_dir)
    assert original.charged_before <= restored <= original.charged_after
    assert len(restored) > len(original.charged_before)  # it copied the busy moment too

    server = servers(config)

    async def check():
        assert await predictions(server.url, original.key) == original.answers
        assert await first_answer(server.url, original.revoked) == {
            "status": "error", "message": "Invalid API key."}

    asyncio.run(check())
    # The deleted version 2's number is not handed out again.
    assert "version 3" in train(config, original.data, "class")

    # While a server uses the data_dir, restore refuses, even with --force.
    refused = run_cli(config, "restore", "--force", str(original.backup), check=False)
    assert ("the stores are in use: connection_registry (sqlite): 1 live Nember process"
            in one_line_error(refused))
    server.terminate()
    refused = run_cli(config, "restore", str(original.backup), check=False)
    message = one_line_error(refused)
    assert "add --force" in message and "keys.sqlite3" in message
    assert "3 versions of 2 models" in message
    forced = run_cli(config, "restore", "--force", str(original.backup)).stdout
    assert "replaced" in forced and "restore complete" in forced
    assert charged(data_dir) == restored
    assert_private(data_dir)


@pytest.mark.parametrize("damage,expected", [
    ("flip", "key_store/keys.sqlite3 is damaged: its SHA-256 differs"),
    ("truncate", "is damaged: 0 bytes"),
    ("missing", "1 missing: model_store/"),
    ("added", "1 not in manifest.json: billing/extra.sqlite3"),
    ("manifest", "no manifest.json (an unfinished backup, or not one)"),
])
def test_restore_refuses_a_damaged_or_partial_backup(original, tmp_path, damage, expected):
    backup = tmp_path / "backup"
    shutil.copytree(original.backup, backup)
    if damage == "flip":
        with open(backup / "key_store" / "keys.sqlite3", "r+b") as handle:
            handle.seek(5000)
            byte = handle.read(1)
            handle.seek(5000)
            handle.write(bytes([byte[0] ^ 1]))
    elif damage == "truncate":
        (backup / "jobs" / "jobs.sqlite3").write_bytes(b"")
    elif damage == "missing":
        next(backup.glob("model_store/*/*/*/*/v000001/model.bin")).unlink()
    elif damage == "added":
        (backup / "billing" / "extra.sqlite3").write_bytes(b"x")
    else:
        (backup / "manifest.json").unlink()
    config = write_config(tmp_path / "fresh")
    message = one_line_error(run_cli(config, "restore", str(backup), check=False))
    assert expected in message and "nothing was restored" in message
    assert not (tmp_path / "fresh" / "data").exists()


def test_backup_refuses_a_folder_that_is_not_empty(original, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("mine")
    message = one_line_error(run_cli(original.config, "backup", str(tmp_path / "full"),
                                     check=False))
    assert "not empty" in message
    assert (tmp_path / "full" / "file").read_text() == "mine"
