"""Config errors through load_config/parse_config, and the CLI's commands through main(), in
this process: the in-process equivalent of the end-to-end tests/e2e/test_config_and_cli.py.

These tests are synchronous: ``main()`` runs its own event loop, as the ``nember`` command
does.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import time
from decimal import Decimal
from pathlib import Path

import pytest
import structlog

from nember_core.app import cli
from nember_core.app.progress import ProgressBar
from nember_core.config import (
    DEFAULT_CONFIG,
    find_config,
    load_config,
    parse_config,
    user_config_file,
    user_data_dir,
)
from nember_core.errors import ConfigError
from nember_core.plugins import collect_providers, installed_families, plugin_manager
from tests.cases import CONFIG_ERRORS as CONFIG_ERRORS_E2E
from tests.cases import MORE_CONFIG_ERRORS
from tests.harness import (
    PASSWORD,
    expected_families,
    warmup_prices,
    write_config,
    write_prices,
)

EMAIL = "trader@example.com"


@pytest.fixture(scope="module")
def providers():
    return collect_providers(plugin_manager())


# --- config errors --------------------------------------------------------------------------

CONFIG_ERRORS = [*CONFIG_ERRORS_E2E, *MORE_CONFIG_ERRORS]


@pytest.mark.parametrize("text,expected", CONFIG_ERRORS,
                         ids=[text.strip().replace("\n", "|") for text, _ in CONFIG_ERRORS])
def test_config_errors_name_the_file_and_the_key(tmp_path, providers, text, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(str(config), providers)
    message = str(raised.value)
    assert type(raised.value) is ConfigError
    assert message == f"{config}: {expected}" or (
        expected.startswith("not valid YAML") and message.startswith(f"{config}: {expected}"))
    assert "\n" not in message


def test_the_yaml_error_says_only_the_line(tmp_path, providers):
    config = tmp_path / "bad.yaml"
    config.write_text("server:\n  host: a\n  port: [\n")
    with pytest.raises(ConfigError) as raised:
        load_config(str(config), providers)
    assert str(raised.value) == f"{config}: not valid YAML at line 4"


def test_a_config_that_is_not_utf8_is_one_line(tmp_path, providers):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("log:\n  level: d\xe9bug\n".encode("latin-1"))
    with pytest.raises(ConfigError) as raised:
        load_config(str(config), providers)
    message = str(raised.value)
    assert message.startswith(f"{config}: cannot read the config file: ")
    assert "\n" not in message


def test_a_config_file_named_but_missing(tmp_path, providers, monkeypatch):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as raised:
        load_config(str(missing), providers)
    assert str(raised.value) == f"{missing}: config file not found"
    monkeypatch.setenv("NEMBER_CONFIG", str(missing))  # named by the environment: the same
    with pytest.raises(ConfigError) as raised:
        load_config(None, providers)
    assert str(raised.value) == f"{missing}: config file not found"


def test_the_config_from_the_environment_variable(tmp_path, providers, monkeypatch):
    config = tmp_path / "env.yaml"
    config.write_text("bogus: 1\n")
    monkeypatch.setenv("NEMBER_CONFIG", str(config))
    with pytest.raises(ConfigError) as raised:
        load_config(None, providers)
    assert str(raised.value) == f"{config}: bogus: unknown key"
    other = tmp_path / "explicit.yaml"  # --config wins over the variable
    other.write_text("data_dir: explicit\n")
    assert load_config(str(other), providers).data_dir == tmp_path / "explicit"


def test_the_documented_minimal_config_works_with_the_embedded_defaults(tmp_path, providers):
    config = tmp_path / "nember.yaml"
    config.write_text("data_dir: var\nserver:\n  host: 127.0.0.1\n  port: 8765\n"
                      "  # tls: {cert: cert.pem, key: key.pem}\n")
    loaded = load_config(str(config), providers)
    assert loaded.path == config
    assert loaded.data_dir == tmp_path / "var"  # relative to the config's folder
    assert (loaded.server.host, loaded.server.port, loaded.server.tls) == ("127.0.0.1", 8765,
                                                                          None)
    assert [loaded.section(role).plugin for role in
            ("key_store", "billing", "model_store", "connection_registry", "jobs")] == [
        "sqlite", "sqlite", "local_disk", "sqlite", "sqlite"]
    assert (loaded.billing.price, loaded.billing.currency) == (Decimal("0.01"), "USD")
    assert loaded.server.rate_limit.per_second >= 1000 and loaded.server.rate_limit.burst >= 2000
    assert loaded.server.max_connections_per_account >= 1000
    assert loaded.server.max_message_size >= 64 * 1024


def test_an_empty_config_file_is_the_defaults(tmp_path, providers):
    config = tmp_path / "empty.yaml"
    config.write_text("# nothing set\n")
    loaded = load_config(str(config), providers)
    assert loaded.data_dir == tmp_path / "var" and loaded.server.port == 8765


@pytest.fixture
def user_folders(tmp_path, monkeypatch) -> dict[str, Path]:
    """An empty current folder, and a home and XDG folders of its own (nothing is found)."""
    folders = {name: tmp_path / name for name in ("cwd", "home", "xdg-config", "xdg-data")}
    for folder in folders.values():
        folder.mkdir()
    monkeypatch.chdir(folders["cwd"])
    monkeypatch.setenv("HOME", str(folders["home"]))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(folders["xdg-config"]))
    monkeypatch.setenv("XDG_DATA_HOME", str(folders["xdg-data"]))
    monkeypatch.delenv("NEMBER_CONFIG", raising=False)
    return folders


def test_without_any_config_file_the_data_is_the_users(user_folders, providers):
    source = find_config(None)
    assert (source.path, source.describe()) == (None, "no config file found")
    loaded = load_config(None, providers)
    assert loaded.path is None and loaded.data_dir == user_folders["xdg-data"] / "nember"


def test_the_xdg_folders_default_to_the_home_folder(user_folders, monkeypatch):
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")  # the spec: absolute paths only
    home = user_folders["home"]
    assert user_config_file() == home / ".config" / "nember" / "nember.yaml"
    assert user_data_dir() == home / ".local" / "share" / "nember"


def test_the_config_search_order(user_folders, providers, monkeypatch):
    cwd = user_folders["cwd"]
    # 5. the per-user config; its relative paths resolve against its folder, but its data
    # stays in the per-user data folder unless it says otherwise.
    user = user_folders["xdg-config"] / "nember" / "nember.yaml"
    user.parent.mkdir()
    user.write_text("server:\n  port: 9001\n  tls: {cert: c.pem, key: k.pem}\n")
    loaded, source = load_config(None, providers), find_config(None)
    assert (source.path, source.found_by, loaded.server.port) == (user, "user", 9001)
    assert source.describe() == f"config {user} (your per-user config)"
    assert loaded.data_dir == user_folders["xdg-data"] / "nember"
    assert loaded.server.tls.cert == user.parent / "c.pem"
    user.write_text("data_dir: mine\n")
    assert load_config(None, providers).data_dir == user.parent / "mine"
    # 4. nember.yaml in the current folder; its data_dir defaults to var beside it
    (cwd / "nember.yaml").write_text("server: {port: 9002}\n")
    loaded, source = load_config(None, providers), find_config(None)
    assert (source.path, source.found_by, loaded.server.port) == (Path("nember.yaml"),
                                                                  "current folder", 9002)
    assert source.describe() == "config nember.yaml (found in the current folder)"
    assert loaded.data_dir == cwd / "var"
    # 3. config/nember.yaml in the current folder (PROTOCOL.md §3's), as in the project's
    # checkout, whose data_dir ../var is the project's var/ (the quick start's)
    (cwd / "config").mkdir()
    (cwd / "config" / "nember.yaml").write_text("data_dir: ../var\nserver: {port: 9003}\n")
    loaded = load_config(None, providers)
    assert (loaded.path, loaded.server.port) == (DEFAULT_CONFIG, 9003)
    assert loaded.data_dir.resolve() == cwd.resolve() / "var"
    # 2. $NEMBER_CONFIG; 1. --config
    named = user_folders["home"] / "named.yaml"
    named.write_text("server: {port: 9004}\n")
    monkeypatch.setenv("NEMBER_CONFIG", str(named))
    assert load_config(None, providers).server.port == 9004
    assert find_config(None).describe() == f"config {named} (from $NEMBER_CONFIG)"
    given = user_folders["home"] / "given.yaml"
    given.write_text("server: {port: 9005}\n")
    assert load_config(str(given), providers).server.port == 9005
    assert find_config(str(given)).describe() == f"config {given} (from --config)"


def test_a_config_folder_is_not_a_config_file(user_folders, providers):
    (user_folders["cwd"] / "nember.yaml").mkdir()  # only files count
    assert find_config(None).path is None


def test_paths_resolve_against_the_config_folder_and_options_reach_the_plugins(
    tmp_path, providers
):
    raw = {"data_dir": "state", "key_store": {"path": "keys/k.sqlite3"},
           "connection_registry": {"heartbeat": 0.25},
           "billing": {"price": "0.25", "currency": " EUR ", "path": "/abs/billing.sqlite3"},
           "server": {"tls": {"cert": "~/c.pem", "key": "k.pem"}}}
    loaded = parse_config(raw, tmp_path / "sub" / "nember.yaml", providers)
    base = (tmp_path / "sub").resolve()
    assert loaded.data_dir == base / "state"
    assert loaded.key_store.options.path == base / "keys" / "k.sqlite3"
    assert loaded.connection_registry.options.heartbeat == 0.25
    assert loaded.billing.section.options.path == Path("/abs/billing.sqlite3")
    assert (loaded.billing.price, loaded.billing.currency) == (Decimal("0.25"), "EUR")
    assert loaded.server.tls.cert == Path("~/c.pem").expanduser()
    assert loaded.server.tls.key == base / "k.pem"


def test_parse_config_names_the_defaults_when_there_is_no_file(providers):
    with pytest.raises(ConfigError) as raised:
        parse_config({"server": {"port": "x"}}, None, providers)
    assert str(raised.value) == "<defaults>: server.port: expected an integer, got a string ('x')"
    with pytest.raises(ConfigError) as raised:
        parse_config("data_dir: var", Path("given.yaml"), providers)
    assert str(raised.value) == "given.yaml: the config must be a mapping of keys to values"


def test_a_plugin_missing_from_the_installed_ones(tmp_path, providers):
    """Without any provider for a role, the config must name one, and can't."""
    lacking = {**providers, "jobs": {}}
    with pytest.raises(ConfigError) as raised:
        parse_config({}, tmp_path / "c.yaml", lacking)
    assert str(raised.value) == f"{tmp_path / 'c.yaml'}: jobs.plugin: name one (installed: none)"


# --- the command line, in this process ------------------------------------------------------


@contextlib.contextmanager
def _isolated_logging():
    """main() configures structlog for the whole process, onto this test's stderr; put the
    configuration back after it, and never let a logger cache that stream."""
    saved = structlog.get_config()
    real = cli.configure

    def configure(level: str = "info", fmt: str = "json") -> None:
        real(level, fmt)
        structlog.configure(cache_logger_on_first_use=False)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "configure", configure)
        try:
            yield
        finally:
            structlog.reset_defaults()
            structlog.configure(**saved)


@pytest.fixture(autouse=True)
def _logging():
    with _isolated_logging():
        yield


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A config and its data folder with one account, made through the CLI."""
    folder = tmp_path_factory.mktemp("cli")
    config = write_config(folder)
    write_prices(folder / "prices.csv", rows=80)
    (folder / "ragged.csv").write_text("point1,point2,direction,move\n1,2,up,0.1\n3,4\n")
    (folder / "semicolons.csv").write_text("point1;point2;direction\n1,5;2,5;up\n")
    (folder / "warmup.csv").write_text(warmup_prices())
    (folder / "gap.csv").write_text(warmup_prices(gap_at=40))
    with _isolated_logging(), pytest.MonkeyPatch.context() as patch:
        patch.setenv("NEMBER_PASSWORD", PASSWORD)
        assert cli.main(["--config", str(config), "accounts", "create", EMAIL]) == 0
    return config


@pytest.fixture
def nember(workspace, capsys, monkeypatch):
    """Run ``nember --config <workspace> ARGS``: (return code, stdout, stderr)."""
    monkeypatch.setenv("NEMBER_PASSWORD", PASSWORD)
    # No progress lines, however slow this machine is today (a test asks for them).
    monkeypatch.setattr(ProgressBar, "LINES_AFTER", 3600.0)
    monkeypatch.chdir(workspace.parent)
    capsys.readouterr()

    def run(*args: str, config: Path | None = workspace) -> tuple[int, str, str]:
        code = cli.main([*(["--config", str(config)] if config else []), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def one_error_line(result: tuple[int, str, str]) -> str:
    code, out, err = result
    assert code == 1, result
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err  # one line, nothing else
    assert lines[0].startswith("nember: error: ")
    return lines[0]


def test_accounts_create(nember):
    code, out, err = nember("accounts", "create", "  second@example.com ")
    assert (code, err) == (0, "")
    assert re.fullmatch(r"Created account second@example\.com \(acct_[0-9a-f]+\)\n", out), out


def test_accounts_create_without_a_password_source(nember, monkeypatch):
    monkeypatch.delenv("NEMBER_PASSWORD")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal
    line = one_error_line(nember("accounts", "create", "x@example.com"))
    assert line == ("nember: error: set NEMBER_PASSWORD, or run in a terminal to be asked for "
                    "a password")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_accounts_create_asks_for_the_password_twice_in_a_terminal(nember, monkeypatch):
    monkeypatch.delenv("NEMBER_PASSWORD")
    monkeypatch.setattr("sys.stdin", _Terminal())
    answers = iter(["first-password", "other-password", "same-password", "same-password"])
    prompts = []

    def getpass(prompt: str) -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(cli.getpass, "getpass", getpass)
    line = one_error_line(nember("accounts", "create", "asked@example.com"))
    assert line == "nember: error: the passwords do not match"
    code, out, _ = nember("accounts", "create", "asked@example.com")
    assert code == 0 and out.startswith("Created account asked@example.com (acct_")
    assert prompts == ["Password: ", "Repeat password: "] * 2


def test_keys_create_list_and_revoke(nember):
    code, out, err = nember("keys", "create", "--account", EMAIL, "--name", "bot-7")
    assert (code, err) == (0, "")
    first, key = out.strip().splitlines()
    match = re.fullmatch(r"Created API key (key_[0-9a-f]+) \('bot-7', scope predict\); it is "
                         r"shown only this once:", first)
    assert match, first
    key_id = match.group(1)
    assert key.startswith("nmb_") and " " not in key and len(key) >= 40

    code, listing, err = nember("keys", "list", "--account", EMAIL)
    assert (code, err) == (0, "")
    rows = [line.split("\t") for line in listing.strip().splitlines()]
    assert rows[0] == ["id", "name", "prefix", "created", "revoked"]
    (mine,) = [row for row in rows if row[0] == key_id]
    assert mine[1] == "bot-7" and key.startswith(mine[2]) and len(mine[2]) < len(key)
    assert mine[4] == "-" and mine[3].endswith("+00:00")
    assert key not in listing  # only the prefix is ever shown again

    code, out, err = nember("keys", "revoke", key)  # by the key itself
    assert (code, err) == (0, "")
    assert out == (f"Revoked API key {key_id} ('bot-7'); its live connections close within "
                   "seconds\n")
    rows = [line.split("\t") for line in nember("keys", "list", "--account", EMAIL)[1]
            .splitlines()]
    (mine,) = [row for row in rows if row[0] == key_id]
    assert mine[4] != "-" and mine[4] >= mine[3]

    # By its id, with the default name.
    code, out, _ = nember("keys", "create", "--account", EMAIL)
    other_id = re.search(r"key_[0-9a-f]+", out).group(0)
    code, out, _ = nember("keys", "revoke", other_id)
    assert (code, out) == (0, f"Revoked API key {other_id} ('default'); its live connections "
                              "close within seconds\n")


WALK_FORWARD = (r"Walk-forward over 5 folds \(horizon 1, purge {purge} samples\); every score "
                r"is on samples never trained on:\n")


def test_train_prints_what_it_trained(nember):
    args = ["train", "--account", EMAIL, "--strat", "cli", "--model", "DecisionTree",
            "--data", "prices.csv", "--window", "2", "--features", "point1, point2"]
    code, out, err = nember(*args, "--type", "class", "--target", "direction")
    assert (code, err) == (0, "")
    score = r" +(0|1)\.\d{3}"
    assert re.fullmatch(
        r"Trained DecisionTree class for strategy 'cli': version 1, 79 samples, window 2, "
        r"features point1,point2\n" + WALK_FORWARD.format(purge=2)
        + r"fold +trained +tested +accuracy +bal\. acc\. +log loss\n"
        + "".join(rf"{k} +0-\d+ +\d+-\d+" + score * 2 + r" +\d+\.\d{3}\n" for k in range(1, 6))
        + r"all +14-78" + score * 2 + r" +\d+\.\d{3}\n"
        + r"Most confident predictions only: top 10% hit rate \d\.\d\d, top 25% hit rate "
          r"\d\.\d\d, top 50% hit rate \d\.\d\d, top 100% hit rate \d\.\d\d\n", out), out
    code, out, err = nember(*args, "--type", "class", "--target", "direction",
                            "--param", "max_depth=2", "--param", "criterion=entropy",
                            "--folds", "3", "--horizon", "4")
    assert (code, err) == (0, "")
    assert "class for strategy 'cli': version 2, 79 samples" in out
    assert "Walk-forward over 3 folds (horizon 4, purge 5 samples)" in out
    code, out, err = nember(*args[:-4], "--type", "reg", "--target", "move")  # the defaults
    assert (code, err) == (0, "")
    assert re.match(
        r"Trained DecisionTree reg for strategy 'cli': version 1, 80 samples, window 1, "
        r"features point1,point2\n" + WALK_FORWARD.format(purge=1)
        + r"fold +trained +tested +MAE +RMSE +R² +hit rate\n", out), out


def test_a_default_feature_that_knows_the_answer_is_left_out_and_said(nember):
    # In prices.csv, direction is "up" exactly when move > 0: move is the answer.
    code, out, err = nember(*train(strat="leaky"))
    assert code == 0 and "features point1,point2\n" in out, out
    assert re.fullmatch(
        r"nember: warning: left out of the default features: feature 'move' predicts the "
        r"target on its own \((0\.9\d|1\.00)\) but not from the row before \(0\.\d\d\): it looks "
        r"computed from later rows\n", err), err


def test_a_named_feature_that_knows_the_answer_trains_with_loud_warnings(nember):
    code, out, err = nember(*train("--features", "point1,move", strat="leaky-named"))
    assert code == 0 and "features point1,move\n" in out, out
    warnings = err.splitlines()
    assert re.match(r"nember: warning: feature 'move' predicts the target on its own "
                    r"\((0\.9\d|1\.00)\) but not from the row before", warnings[0]), err
    assert warnings[1].startswith("nember: warning: out-of-sample balanced accuracy 1.00 is "
                                  "too good to be true for market data"), err


def test_the_backtest_follows_the_signal_against_buy_and_hold(nember, workspace):
    rows = (workspace.parent / "prices.csv").read_text().splitlines()
    with_returns = [rows[0] + ",ret"] + [f"{row},{float(row.split(',')[3]) / 100:.6f}"
                                         for row in rows[1:]]
    (workspace.parent / "returns.csv").write_text("\n".join(with_returns) + "\n")
    code, out, err = nember(*train("--features", "point1,point2", "--returns", "ret",
                                   data="returns.csv", strat="backtest"))
    assert (code, err) == (0, "")
    header = out.splitlines()[2]
    assert header.split()[-3:] == ["return", "hold", "trades"]
    assert re.search(r"^all .* [+-]\d+\.\d% +[+-]\d+\.\d% +\d+$", out, re.M), out
    assert re.search(
        r"^Backtest, following the signal vs buy-and-hold: return [+-]\d+\.\d% vs "
        r"[+-]\d+\.\d%, Sharpe -?\d+\.\d{3} vs -?\d+\.\d{3}, max drawdown \d+\.\d% vs "
        r"\d+\.\d%, \d+ trades \(no costs\)$", out, re.M), out
    code, out, err = nember(*train("--returns", "move", strat="bps"))  # not fractions
    assert "(no backtest: a return of 100% or more in one bar; give returns as fractions" in out


def test_train_skips_the_warm_up_rows_when_asked(nember):
    code, out, err = nember(*train("--skip-warmup", data="warmup.csv", target="move",
                                   model_type="reg", strat="warm"))
    assert (code, err) == (0, "")
    assert out.startswith(
        "Trained DecisionTree reg for strategy 'warm': version 1, 78 samples (2 warm-up rows "
        "skipped), window 1, features point1,point2,sma3\n"), out


def test_families_lists_the_installed_ones(nember):
    code, out, err = nember("families")
    assert (code, err) == (0, "")
    rows = [line.split("\t") for line in out.splitlines()]
    assert [row[0] for row in rows] == sorted(installed_families())
    assert all(len(row) == 2 and row[1] for row in rows)
    assert expected_families() <= {row[0] for row in rows}


def train(*extra: str, model: str = "DecisionTree", model_type: str = "class",
          data: str = "prices.csv", target: str = "direction", strat: str = "s") -> list[str]:
    return ["train", "--account", EMAIL, "--strat", strat, "--model", model,
            "--type", model_type, "--data", data, "--target", target, *extra]


CLI_ERRORS = [
    # the end-to-end cases
    (["keys", "create", "--account", "nobody@example.com"], "no account for nobody@example.com"),
    (["keys", "revoke", "key_doesnotexist"],
     "no such API key (give its id, as `nember keys list` shows, or the key)"),
    (["accounts", "create", EMAIL], f"an account for {EMAIL} already exists"),
    (["accounts", "create", "not-an-email"], "'not-an-email' is not an email address"),
    (train(model="Nope"), "no installed model family 'Nope' (installed: {families})"),
    (train(data="missing.csv"), "missing.csv: file not found"),
    (train(target="nope"), "prices.csv: no column named 'nope' (columns: point1, point2, "
     "direction, move)"),
    (train(model_type="reg"), "regression needs a numeric target, but 'direction' holds"),
    (train("--window", "0"), "the window must be a whole number from 1 to 1000, not 0"),
    (train("--features", "point1,direction"),
     "prices.csv: the target 'direction' cannot also be a feature"),
    (train("--features", "direction", target="move"),
     "prices.csv: feature 'direction' is not numeric (line 2: "),
    (train("--param", "max_depth=-3"),
     "the hyperparameter 'max_depth' must be from 1 to 100, got -3"),
    (train("--param", "no_such_param=1"),
     "DecisionTree has no hyperparameter 'no_such_param' (it takes: ccp_alpha, class_weight, "),
    (train("--param", "n_jobs=8"), "DecisionTree has no hyperparameter 'n_jobs'"),
    (train("--param", "min_samples_split=1"), "DecisionTree could not be trained: "),
    (train(model="DecisionTree", data="ragged.csv"),
     "ragged.csv: line 3 has 2 values, the header has 4"),
    # more
    (["keys", "list", "--account", "nobody@example.com"], "no account for nobody@example.com"),
    (["keys", "create", "--account", EMAIL, "--name", "  "],
     "a key name must have 1 to 200 characters"),
    (train(strat=""), "a strategy name must have 1 to 200 characters"),
    (train("--window", "1001"), "the window must be a whole number from 1 to 1000, not 1001"),
    (train("--features", " , "), "--features: name at least one column"),
    (train("--features", "point1,nope"),
     "prices.csv: no column named 'nope' (columns: point1, point2, direction, move)"),
    (train("--param", "max_depth"), "--param 'max_depth': expected NAME=VALUE"),
    (train("--param", "=3"), "--param '=3': expected NAME=VALUE"),
    (train("--param", "max_depth=[1"), "--param 'max_depth=[1': cannot read the value"),
    (train(data="."), ".: cannot read the CSV file: "),
    (train(data="semicolons.csv"), "semicolons.csv: the header is one column, "
     "'point1;point2;direction': the file looks separated by semicolons. Save it as "
     "comma-separated values (commas between values, a point as the decimal mark)"),
    (train(data="warmup.csv"), "warmup.csv: column 'sma3' is empty on its first 2 rows "
     "(warm-up rows of an indicator?): skip the warm-up rows (the CLI's --skip-warmup, the "
     "REST API's skip_warmup=true), or name the features to use"),
    (train("--features", "point1,sma3", data="warmup.csv"), "warmup.csv: feature 'sma3' is "
     "empty on its first 2 rows (warm-up rows of an indicator?): skip the warm-up rows"),
    (train("--skip-warmup", "--features", "point1,sma3", data="gap.csv"),  # leading rows only
     "gap.csv: feature 'sma3' is not numeric (line 42: '')"),
    (["train", "--account", "nobody@example.com", "--strat", "s", "--model", "DecisionTree",
      "--type", "class", "--data", "prices.csv", "--target", "direction"],
     "no account for nobody@example.com"),
]


@pytest.mark.parametrize("args,expected", CLI_ERRORS,
                         ids=[" ".join(args)[:60] for args, _ in CLI_ERRORS])
def test_cli_errors_are_one_clear_line(nember, args, expected):
    expected = expected.replace("{families}", ", ".join(sorted(installed_families())))
    line = one_error_line(nember(*args))
    assert line.startswith(f"nember: error: {expected}"), line


def test_a_short_password_is_one_line(nember, monkeypatch):
    monkeypatch.setenv("NEMBER_PASSWORD", "short")
    line = one_error_line(nember("accounts", "create", "short@example.com"))
    assert line == "nember: error: the password must have at least 8 characters"


def test_config_errors_reach_the_cli_as_one_line(nember, tmp_path, monkeypatch):
    missing = tmp_path / "nope.yaml"
    line = one_error_line(nember("keys", "list", "--account", EMAIL, config=missing))
    assert line == f"nember: error: {missing}: config file not found"
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: eighty\n")
    line = one_error_line(nember("families", config=bad))
    assert line == (f"nember: error: {bad}: server.port: expected an integer, got a string "
                    "('eighty')")
    monkeypatch.setenv("NEMBER_CONFIG", str(bad))  # no --config: the variable's file
    line = one_error_line(nember("keys", "list", "--account", EMAIL, config=None))
    assert line.startswith(f"nember: error: {bad}: server.port: ")


def test_the_data_folder_is_for_its_owner_only(nember, workspace):
    data_dir = workspace.parent / "data"
    assert data_dir.is_dir() and data_dir.stat().st_mode & 0o777 == 0o700
    data_dir.chmod(0o755)  # as an older version left it: tightened on the next command
    assert nember("keys", "list", "--account", EMAIL)[0] == 0
    assert data_dir.stat().st_mode & 0o777 == 0o700


def test_a_data_folder_that_cannot_be_written_is_one_line_not_a_listen_error(nember, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = write_config(tmp_path, data_dir=blocker / "data")  # inside a file: never a folder
    for command in (("serve",), ("accounts", "create", "new@example.com")):
        line = one_error_line(nember(*command, config=config))
        assert line.startswith(f"nember: error: {blocker / 'data'}: the data folder can't be "
                               "written: ")
    # A command that reads finds nothing there, and says so.
    line = one_error_line(nember("keys", "list", "--account", EMAIL, config=config))
    assert line.startswith(f"nember: error: no data in {blocker / 'data'} (config {config} ")


def test_a_port_out_of_range_is_one_line(nember):
    line = one_error_line(nember("serve", "--port", "80000"))
    assert line == "nember: error: --port: expected a port number from 0 to 65535"


def test_revoking_a_revoked_key_says_so(nember):
    key = nember("keys", "create", "--account", EMAIL, "--name", "twice")[1].splitlines()[-1]
    assert nember("keys", "revoke", key)[1].startswith("Revoked API key ")
    code, out, err = nember("keys", "revoke", key)
    assert (code, err) == (0, "")
    assert re.fullmatch(r"API key key_[0-9a-f]+ \('twice'\) was already revoked, at "
                        r"\S+\+00:00\n", out), out


def test_the_version_has_a_short_flag(nember, capsys):
    with pytest.raises(SystemExit) as done:
        nember("-V", config=None)
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("nember 0.1.0")


# --- where the config and the data are, seen from the command line ---------------------------


@pytest.fixture
def here(capsys, monkeypatch):
    """Run ``nember ARGS`` in the current folder, with no --config: (code, stdout, stderr)."""
    monkeypatch.setenv("NEMBER_PASSWORD", PASSWORD)
    capsys.readouterr()

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _everything(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


NEEDS_DATA = [  # every command that reads, or needs an account
    ("keys", "list", "--account", EMAIL),
    ("keys", "create", "--account", EMAIL),
    ("keys", "revoke", "key_0123"),
    ("accounts", "list"),
    ("accounts", "password", EMAIL),
    ("models", "list", "--account", EMAIL),
    ("models", "delete", "--account", EMAIL, "--strat", "s", "--model", "DecisionTree",
     "--type", "class"),
    tuple(train()),
]


@pytest.mark.parametrize("args", NEEDS_DATA, ids=[" ".join(args[:2]) for args in NEEDS_DATA])
def test_a_command_finding_no_data_says_so_and_creates_nothing(user_folders, here, tmp_path,
                                                              args):
    before = _everything(tmp_path)
    line = one_error_line(here(*args))
    data = user_folders["xdg-data"] / "nember"
    assert line == (f"nember: error: no data in {data} (no config file found; pass --config "
                    "FILE, or see `nember --help`)")
    assert _everything(tmp_path) == before  # not even the data folder


def test_no_data_where_the_config_found_says_puts_the_data(user_folders, here, tmp_path):
    (user_folders["cwd"] / "nember.yaml").write_text("data_dir: state\n")
    before = _everything(tmp_path)
    line = one_error_line(here("keys", "list", "--account", EMAIL))
    assert line == (f"nember: error: no data in {user_folders['cwd'] / 'state'} (config "
                    "nember.yaml (found in the current folder); `nember accounts create "
                    "EMAIL` makes the first account)")
    (user_folders["cwd"] / "state").mkdir()  # an empty folder holds no data either
    assert one_error_line(here("accounts", "list")).startswith("nember: error: no data in ")
    assert _everything(tmp_path) == sorted([*before, "cwd/state"])


def test_the_first_account_makes_the_data_and_says_where(user_folders, here):
    data = user_folders["xdg-data"] / "nember"
    code, out, err = here("accounts", "create", EMAIL)
    assert code == 0 and out.startswith(f"Created account {EMAIL} ")
    assert err == f"nember: no config file found; keeping the data in {data}\n"
    assert (data / "keys.sqlite3").is_file() and data.stat().st_mode & 0o777 == 0o700
    code, out, err = here("accounts", "create", "second@example.com")
    assert (code, err) == (0, "")  # the data was there: nothing to say
    code, out, err = here("keys", "list", "--account", EMAIL)
    assert (code, out, err) == (0, "id\tname\tprefix\tcreated\trevoked\n", "")


def test_serve_and_demo_say_which_config_and_data_unless_config_names_them(
    user_folders, here, monkeypatch, tmp_path
):
    from nember_core.app import demo, server

    served = []
    monkeypatch.setattr(server, "serve", lambda nember, host, port: served.append(port))
    monkeypatch.setattr(demo, "run_demo", lambda nember, host, port: served.append(port))
    cwd = user_folders["cwd"]
    (cwd / "nember.yaml").write_text("server: {port: 9100}\n")
    for command in ("serve", "demo"):
        code, out, err = here(command, "--port", "9101")
        assert (code, out) == (0, "")
        assert err == (f"nember: config nember.yaml (found in the current folder); data in "
                       f"{cwd / 'var'}\n")
        assert here(command, "--config", "nember.yaml") == (0, "", "")
    assert served == [9101, None] * 2
    (cwd / "nember.yaml").unlink()
    assert here("serve")[2] == (f"nember: no config file found; data in "
                                f"{user_folders['xdg-data'] / 'nember'}\n")


def test_a_port_out_of_range_is_said_before_anything_else(user_folders, here):
    for command in ("serve", "demo"):
        line = one_error_line(here(command, "--port", "80000"))
        assert line == "nember: error: --port: expected a port number from 0 to 65535"
    line = one_error_line(here("serve", "--workers", "0"))
    assert line == "nember: error: --workers: expected an integer >= 1"


# --- --help ---------------------------------------------------------------------------------


def _commands(parser, path=()):
    """Every (sub)command's parser, with its words."""
    for action in parser._actions:
        if isinstance(action, cli.argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name), child
                yield from _commands(child, (*path, name))


def test_every_command_has_a_description_an_example_and_help_on_every_option():
    mine = [(words, parser) for words, parser in _commands(cli._parser())
            if words[0] not in ("backup", "restore")]  # another change's commands
    assert {" ".join(words) for words, _ in mine} >= {
        "demo", "serve", "accounts", "accounts create", "accounts list", "accounts password",
        "keys", "keys create", "keys list", "keys revoke", "train", "models", "models list",
        "models delete", "families", "db", "db upgrade"}
    for words, parser in mine:
        assert parser.description, words
        assert parser.epilog and f"nember {words[0]}" in parser.epilog, words
        for action in parser._actions:
            assert action.help, (words, action.dest)


def test_the_help_shows_defaults_the_families_and_the_search_order(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "data points per sample" in text and "(default: 1)" in text
    assert f"one of those installed: {', '.join(sorted(installed_families()))}" in text
    assert "example: nember train --account" in text
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("--config FILE; else the file $NEMBER_CONFIG names; else config/nember.yaml, then "
            "nember.yaml, in the current folder; else the per-user") in text
    assert "(~/.local/share/nember)" in text
    with pytest.raises(SystemExit):
        cli.main(["models", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "list, delete or import; `ACTION --help` says more list list an account's models" in text


# --- accounts list, accounts password -------------------------------------------------------


def _run_services(config: Path, work):
    from nember_core.app.nember import Nember

    async def run():
        async with Nember.load(str(config)).services() as services:
            return await work(services)

    return asyncio.run(run())


def test_accounts_list(nember):
    code, out, err = nember("accounts", "list")
    assert (code, err) == (0, "")
    rows = [line.split("\t") for line in out.splitlines()]
    assert rows[0] == ["id", "email", "created"]
    (mine,) = [row for row in rows if row[1] == EMAIL]
    assert mine[0].startswith("acct_") and mine[2].endswith("+00:00")
    assert [row[2] for row in rows[1:]] == sorted(row[2] for row in rows[1:])  # oldest first


def test_accounts_password_changes_it_and_ends_the_dashboard_sessions(nember, workspace,
                                                                      monkeypatch):
    email = "pw@example.com"
    assert nember("accounts", "create", email)[0] == 0

    async def log_in(services):
        account = await services.accounts.by_email(email)
        return [await services.accounts.start_session(account) for _ in range(2)]

    tokens = _run_services(workspace, log_in)
    monkeypatch.setenv("NEMBER_PASSWORD", "a brand new password")
    code, out, err = nember("accounts", "password", email)
    assert (code, err) == (0, "")
    assert re.fullmatch(r"Changed the password of pw@example\.com \(acct_[0-9a-f]+\); ended "
                        r"its dashboard sessions \(2 open\); its API keys keep working\n", out)

    async def check(services):
        keys = services.stores.key_store
        return (await keys.check_password(email, PASSWORD),
                (await keys.check_password(email, "a brand new password")).email,
                [await services.accounts.session(token) for token in tokens])

    assert _run_services(workspace, check) == (None, email, [None, None])
    monkeypatch.setenv("NEMBER_PASSWORD", "short")
    assert one_error_line(nember("accounts", "password", email)) == (
        "nember: error: the password must have at least 8 characters")
    assert one_error_line(nember("accounts", "password", "nobody@example.com")) == (
        "nember: error: no account for nobody@example.com")


def test_a_key_store_that_cannot_end_sessions_says_so(nember, monkeypatch):
    from nember_sqlite.key_store import SqliteKeyStore

    monkeypatch.delattr(SqliteKeyStore, "delete_sessions")
    code, out, err = nember("accounts", "password", EMAIL)
    assert (code, err) == (0, "")
    assert out.endswith("; the key store can't end its dashboard sessions: they last until "
                        "they expire (at most dashboard.session_hours, 24 h); its API keys keep "
                        "working\n"), out
    monkeypatch.delattr(SqliteKeyStore, "list_accounts")
    monkeypatch.delattr(SqliteKeyStore, "set_password")
    assert one_error_line(nember("accounts", "list")) == (
        "nember: error: the configured key store can't list accounts")
    assert one_error_line(nember("accounts", "password", EMAIL)) == (
        "nember: error: the configured key store can't change passwords")


# --- models list, models delete -------------------------------------------------------------


def test_models_list_and_delete(nember):
    for _ in range(2):
        assert nember(*train(strat="listed", model_type="class"))[0] == 0
    assert nember(*train(strat="listed", model_type="reg", target="move"))[0] == 0
    code, out, err = nember("models", "list", "--account", EMAIL)
    assert (code, err) == (0, "")
    rows = [line.split("\t") for line in out.splitlines()]
    assert rows[0] == ["strategy", "family", "type", "version", "trained", "metrics"]
    listed = [row for row in rows[1:] if row[0] == "listed"]
    assert [row[1:4] for row in listed] == [["DecisionTree", "class", "2*"],
                                            ["DecisionTree", "class", "1"],
                                            ["DecisionTree", "reg", "1*"]]
    assert all(row[4].endswith("+00:00") for row in listed)
    assert re.fullmatch(r"accuracy [\d.]+, balanced_accuracy [\d.]+, log_loss [\d.]+", listed[0][5])
    assert re.fullmatch(r"\w+ -?[\d.e-]+(, \w+ -?[\d.e-]+)+", listed[2][5])

    model = ["--account", EMAIL, "--strat", "listed", "--model", "DecisionTree"]
    code, out, err = nember("models", "delete", *model, "--type", "class", "--version", "2")
    assert (code, err) == (0, "")
    assert out == ("Deleted version 2 of the model DecisionTree class for strategy 'listed'; "
                   "version 1 serves now\n")
    line = one_error_line(nember("models", "delete", *model, "--type", "class",
                                 "--version", "2"))
    assert line == ("nember: error: no version 2 of the model DecisionTree class for strategy "
                    "'listed'")
    code, out, err = nember("models", "delete", *model, "--type", "reg")
    assert out == "Deleted the model DecisionTree reg for strategy 'listed': every version (1)\n"
    line = one_error_line(nember("models", "delete", *model, "--type", "reg"))
    assert line == "nember: error: no model DecisionTree reg for strategy 'listed'"
    rows = [line.split("\t") for line in nember("models", "list", "--account", EMAIL)[1]
            .splitlines()]
    assert [row[1:4] for row in rows if row[0] == "listed"] == [["DecisionTree", "class", "1*"]]
    line = one_error_line(nember("models", "list", "--account", "nobody@example.com"))
    assert line == "nember: error: no account for nobody@example.com"


# --- train: progress, and native code -------------------------------------------------------


class _Lines(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere_once_work_is_slow(monkeypatch):
    bar = ProgressBar("DecisionTree class", _Terminal(), lines=True)
    bar(0.05, "windowing")
    bar(1.0, "trained")
    assert bar.stream.getvalue() == (
        "\rDecisionTree class [#-----------------------------]   5% windowing" + " " * 19
        + "\rDecisionTree class [##############################] 100% trained" + " " * 21 + "\n")
    quick = ProgressBar("quick", _Lines(), lines=True)
    quick(0.05, "windowing")
    quick(1.0, "trained")
    quick.close()
    assert quick.stream.getvalue() == ""  # done before LINES_AFTER: no noise
    monkeypatch.setattr(ProgressBar, "LINES_AFTER", 0.2)
    slow = ProgressBar("slow", _Lines(), lines=True)
    slow(0.05, "windowing")
    slow(0.15, "fitting")
    time.sleep(0.5)  # the stage running when the delay ends is said by the timer
    slow(0.15, "fitting")  # the same stage again: said once
    slow(0.9, "serializing")
    slow.close()
    slow(1.0, "trained")  # after close: nothing
    assert slow.stream.getvalue() == "slow:  15% fitting\nslow:  90% serializing\n"
    assert not ProgressBar("scripts", _Lines()).lines  # without lines=True: silent


def test_train_says_its_stages_in_plain_lines_when_stderr_is_no_terminal(nember, monkeypatch):
    monkeypatch.setattr(ProgressBar, "LINES_AFTER", 0.0)
    code, out, err = nember(*train("--features", "point1,point2", strat="progress"))
    assert code == 0 and out.startswith("Trained DecisionTree class for strategy 'progress'")
    lines = err.splitlines()
    assert lines[0] == "DecisionTree class:   2% checking the features"
    assert "DecisionTree class:  10% walk-forward: fold 1 of 5" in lines
    assert lines[-1] == "DecisionTree class: 100% trained"
    assert all(re.fullmatch(r"DecisionTree class: +\d+% [\w :-]+", line) for line in lines)


@pytest.fixture(scope="module")
def compiling(tmp_path_factory) -> Path:
    """A config that compiles trees, with an account."""
    folder = tmp_path_factory.mktemp("compiling")
    config = write_config(folder, server={"compile_trees": True})
    write_prices(folder / "prices.csv", rows=80)
    with _isolated_logging(), pytest.MonkeyPatch.context() as patch:
        patch.setenv("NEMBER_PASSWORD", PASSWORD)
        assert cli.main(["--config", str(config), "accounts", "create", EMAIL]) == 0
    return config


def test_train_compiles_a_tree_model_so_that_servers_load_it_native(nember, compiling):
    from nember_core.records import ModelKey
    from nember_core.serving.model_cache import ModelCache
    from nember_core.trees import reader
    from nember_core.trees.compiler import TreeCompiler, unavailable_reason

    if unavailable_reason():
        pytest.skip(f"no native code here: {unavailable_reason()}")
    code, out, err = nember(*train("--features", "point1,point2", strat="native",
                                   data=str(compiling.parent / "prices.csv")),
                            config=compiling)
    assert code == 0, err
    compiled = compiling.parent / "data" / "compiled"
    assert out.splitlines()[-1] == (f"Compiled DecisionTree class version 1 to native code "
                                    f"(in {compiled}): servers load it native")
    assert "DecisionTree class version 1: compiling its trees to native code...\n" in err
    assert len(list(compiled.glob("tl2cgen-*.so"))) == 1
    # ...and the compiled reader, wherever this Python has its headers
    assert len(list(compiled.glob("reader-*.so"))) == (reader.unavailable_reason() is None)

    async def first_load(services):  # as a server loads it: from the cache, native at once
        compiler = TreeCompiler(compiled)
        cache = ModelCache(services.stores.model_store, services.models.families,
                           compiler=compiler)
        account = await services.accounts.by_email(EMAIL)
        key = ModelKey(account.id, "native", "DecisionTree", "class")
        try:
            await cache.load(key)
            return cache.get(key).native
        finally:
            await compiler.close()

    assert _run_services(compiling, first_load) is True
    # A model that isn't made of trees compiles nothing, and says nothing about it.
    code, out, err = nember(*train("--features", "point1,point2", strat="native",
                                   model="Linear", data=str(compiling.parent / "prices.csv")),
                            config=compiling)
    assert (code, err) == (0, "") and "Compiled" not in out


def test_train_says_why_it_could_not_compile(nember, compiling, monkeypatch):
    monkeypatch.setattr("nember_core.trees.compiler.unavailable_reason",
                        lambda: "gcc is not on the PATH")
    code, out, err = nember(*train("--features", "point1,point2", strat="interpreted",
                                   data=str(compiling.parent / "prices.csv")),
                            config=compiling)
    assert code == 0 and out.startswith("Trained ") and "Compiled" not in out
    assert err == ("nember: DecisionTree class version 1 not compiled to native code: gcc is "
                   "not on the PATH (servers answer through its NumPy or library path)\n")
    # With compile_trees off (the workspace's config): not a word about it.
    code, out, err = nember(*train("--features", "point1,point2", strat="interpreted"))
    assert (code, err) == (0, "") and "Compiled" not in out and "compil" not in err
