"""Config and CLI errors: one clear line on stderr, a non-zero exit; and the CLI's happy paths."""

from __future__ import annotations

import pytest

from tests.cases import CONFIG_ERRORS
from tests.harness import PASSWORD, run_cli, write_prices

pytestmark = pytest.mark.e2e  # real nember processes: `pytest -m e2e`


def fails(config, *args, env=None) -> str:
    result = run_cli(config, *args, env=env, check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, no traceback
    return lines[0]


@pytest.mark.parametrize("text,expected", CONFIG_ERRORS)
def test_config_errors_name_the_file_and_the_key(tmp_path, text, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    line = fails(config, "serve")
    assert line.startswith(f"nember: error: {config}: ")
    assert expected in line


def test_missing_config_file_named_explicitly(tmp_path):
    line = fails(tmp_path / "nope.yaml", "keys", "list", "--account", "a@b.co")
    assert line == f"nember: error: {tmp_path / 'nope.yaml'}: config file not found"


def test_config_from_the_environment_variable(tmp_path):
    config = tmp_path / "env.yaml"
    config.write_text("bogus: 1\n")
    line = fails(None, "serve", env={"NEMBER_CONFIG": str(config)})
    assert f"{config}: bogus: unknown key" in line


def test_port_in_use_is_one_line(workspace):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = fails(workspace.config, "serve", "--port", str(port))
    assert line.startswith(f"nember: error: cannot listen on 127.0.0.1:{port}")


def train(*extra: str, model: str = "DecisionTree", model_type: str = "class",
          data: str = "prices.csv", target: str = "direction") -> list[str]:
    """A `nember train` command line for the workspace's account."""
    return ["train", "--account", "trader@example.com", "--strat", "s", "--model", model,
            "--type", model_type, "--data", data, "--target", target, *extra]


@pytest.mark.parametrize(
    "args,expected",
    [
        (["keys", "create", "--account", "nobody@example.com"],
         "no account for nobody@example.com"),
        (["keys", "revoke", "key_doesnotexist"], "no such API key"),
        (["accounts", "create", "trader@example.com"],
         "an account for trader@example.com already exists"),
        (["accounts", "create", "not-an-email"], "'not-an-email' is not an email address"),
        (train(model="Nope"),
         "no installed model family 'Nope' (installed: DecisionTree, ExtraTrees"),
        (train(data="missing.csv"),
         "missing.csv: file not found"),
        (train(target="nope"),
         "no column named 'nope' (columns: point1, point2, direction, move)"),
        (train(model_type="reg"),
         "regression needs a numeric target, but 'direction' holds"),
        (train("--window", "0"),
         "the window must be a whole number from 1 to 1000, not 0"),
        (train("--features", "point1,direction"),
         "the target 'direction' cannot also be a feature"),
        (train("--features", "direction", target="move"),
         "feature 'direction' is not numeric (line 2: "),
        (train("--param", "max_depth=-3"),
         "the hyperparameter 'max_depth' must be from 1 to 100, got -3"),
        (train("--param", "no_such_param=1"),
         "DecisionTree has no hyperparameter 'no_such_param'"),
        (train("--param", "min_samples_split=1"),
         "DecisionTree could not be trained: "),
        (train(model="XGBoost", data="ragged.csv"),
         "ragged.csv: line 3 has 2 values, the header has 4"),
    ],
)
def test_cli_errors_are_one_clear_line(workspace, monkeypatch, args, expected):
    monkeypatch.chdir(workspace.folder)
    (workspace.folder / "ragged.csv").write_text(
        "point1,point2,direction,move\n1,2,up,0.1\n3,4\n"
    )
    line = fails(workspace.config, *args)
    assert line.startswith("nember: error: ")
    assert expected in line


def test_accounts_create_without_a_password_source_fails_clearly(tmp_path):
    from tests.harness import write_config

    config = write_config(tmp_path)
    line = fails(config, "accounts", "create", "x@example.com", env={"NEMBER_PASSWORD": ""})
    assert "set NEMBER_PASSWORD" in line


def test_keys_create_prints_the_key_alone_on_the_last_line_and_list_shows_it(workspace):
    out = run_cli(workspace.config, "keys", "create", "--account", "trader@example.com",
                  "--name", "bot-7").stdout
    key = out.strip().splitlines()[-1]
    assert key.startswith("nmb_") and " " not in key and len(key) >= 40
    listing = run_cli(workspace.config, "keys", "list", "--account", "trader@example.com").stdout
    rows = [line.split("\t") for line in listing.strip().splitlines()]
    assert rows[0] == ["id", "name", "prefix", "created", "revoked"]
    mine = [row for row in rows if row[1] == "bot-7"]
    assert len(mine) == 1 and key.startswith(mine[0][2]) and mine[0][4] == "-"
    assert key not in listing  # only the prefix is ever shown again
    # Revoke by the key itself; then it shows a revoked time.
    run_cli(workspace.config, "keys", "revoke", key)
    listing = run_cli(workspace.config, "keys", "list", "--account", "trader@example.com").stdout
    rows = [line.split("\t") for line in listing.splitlines()]
    assert [row for row in rows if row[1] == "bot-7"][0][4] != "-"


def test_secrets_are_stored_hashed(workspace):
    import sqlite3

    key = workspace.new_key("hashed")
    raw = (workspace.folder / "data" / "keys.sqlite3").read_bytes()
    db = sqlite3.connect(workspace.folder / "data" / "keys.sqlite3")
    dump = "\n".join(db.iterdump())
    db.close()
    assert key not in dump and key.encode() not in raw
    assert PASSWORD not in dump
    assert "scrypt$" in dump


def test_train_default_features_are_every_numeric_column_but_the_target(workspace, tmp_path):
    data = write_prices(tmp_path / "p.csv")
    out = run_cli(workspace.config, "train", "--account", "trader@example.com", "--strat", "d",
                  "--model", "DecisionTree", "--type", "reg", "--data", str(data),
                  "--target", "move").stdout
    assert "features point1,point2\n" in out and "window 1" in out


# --- where the config and the data are (issue 11) ---------------------------------------------


@pytest.fixture
def elsewhere(tmp_path):
    """Run a real `nember` in an empty folder, with a home and XDG folders of its own and no
    $NEMBER_CONFIG: as a user who runs it from anywhere but the project's folder."""
    import os
    import subprocess

    from tests.harness import NEMBER

    folders = {name: tmp_path / name for name in ("cwd", "home", "xdg-config", "xdg-data")}
    for folder in folders.values():
        folder.mkdir()
    env = {**os.environ, "HOME": str(folders["home"]), "NEMBER_PASSWORD": PASSWORD,
           "XDG_CONFIG_HOME": str(folders["xdg-config"]),
           "XDG_DATA_HOME": str(folders["xdg-data"])}
    env.pop("NEMBER_CONFIG", None)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([NEMBER, *args], cwd=folders["cwd"], env=env,
                              capture_output=True, text=True, timeout=120)

    run.folders = folders
    return run


def _everything(folder) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def test_keys_list_where_there_is_no_data_says_so_and_creates_nothing(elsewhere, tmp_path):
    before = _everything(tmp_path)
    result = elsewhere("keys", "list", "--account", "trader@example.com")
    assert result.returncode == 1 and result.stdout == ""
    data = elsewhere.folders["xdg-data"] / "nember"
    assert result.stderr == (f"nember: error: no data in {data} (no config file found; pass "
                             "--config FILE, or see `nember --help`)\n")
    assert _everything(tmp_path) == before  # no ./var, no data folder, nothing


def test_the_first_account_goes_to_the_users_data_folder_and_says_so(elsewhere):
    data = elsewhere.folders["xdg-data"] / "nember"
    created = elsewhere("accounts", "create", "trader@example.com")
    assert created.returncode == 0, created.stderr
    assert created.stderr == f"nember: no config file found; keeping the data in {data}\n"
    assert (data / "keys.sqlite3").is_file()
    assert not (elsewhere.folders["cwd"] / "var").exists()
    listed = elsewhere("keys", "list", "--account", "trader@example.com")
    assert (listed.returncode, listed.stderr) == (0, "")


def test_a_port_out_of_range_is_one_line(elsewhere):
    result = elsewhere("serve", "--port", "80000")
    assert result.returncode == 1
    assert result.stderr == "nember: error: --port: expected a port number from 0 to 65535\n"


def test_the_help_describes_the_commands(elsewhere):
    result = elsewhere("--help")
    assert result.returncode == 0 and "~/.local/share/nember" in result.stdout
    result = elsewhere("train", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "(default: 1)" in text and "DecisionTree" in text and "example:" in text


def test_revoking_a_revoked_key_says_so(workspace):
    key = workspace.new_key("twice")
    first = run_cli(workspace.config, "keys", "revoke", key).stdout
    assert first.startswith("Revoked API key ")
    again = run_cli(workspace.config, "keys", "revoke", key)
    assert again.returncode == 0 and " was already revoked, at " in again.stdout
