"""Config errors through load_config/parse_config, and the CLI's commands through main(), in
this process: the in-process equivalent of the end-to-end tests/e2e/test_config_and_cli.py.

These tests are synchronous: ``main()`` runs its own event loop, as the ``nember`` command
does.
"""

from __future__ import annotations

import contextlib
import io
import re
from decimal import Decimal
from pathlib import Path

import pytest
import structlog

from nember_core.app import cli
from nember_core.config import load_config, parse_config
from nember_core.errors import ConfigError
from nember_core.plugins import collect_providers, installed_families, plugin_manager
from tests.cases import CONFIG_ERRORS as CONFIG_ERRORS_E2E
from tests.cases import MORE_CONFIG_ERRORS
from tests.harness import PASSWORD, write_config, write_prices

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


def test_without_any_config_file_the_defaults_resolve_against_the_working_folder(
    tmp_path, providers, monkeypatch
):
    monkeypatch.delenv("NEMBER_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no config/nember.yaml here
    loaded = load_config(None, providers)
    assert loaded.path is None and loaded.data_dir == tmp_path / "var"


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
    with _isolated_logging(), pytest.MonkeyPatch.context() as patch:
        patch.setenv("NEMBER_PASSWORD", PASSWORD)
        assert cli.main(["--config", str(config), "accounts", "create", EMAIL]) == 0
    return config


@pytest.fixture
def nember(workspace, capsys, monkeypatch):
    """Run ``nember --config <workspace> ARGS``: (return code, stdout, stderr)."""
    monkeypatch.setenv("NEMBER_PASSWORD", PASSWORD)
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


def test_train_prints_what_it_trained(nember):
    args = ["train", "--account", EMAIL, "--strat", "cli", "--model", "DecisionTree",
            "--data", "prices.csv", "--window", "2", "--features", "point1, point2"]
    code, out, err = nember(*args, "--type", "class", "--target", "direction")
    assert (code, err) == (0, "")
    assert re.fullmatch(
        r"Trained DecisionTree class for strategy 'cli': version 1, 79 samples, window 2, "
        r"features point1,point2; hold-out: accuracy (0(\.\d+)?|1(\.0+)?)\n", out), out
    code, out, err = nember(*args, "--type", "class", "--target", "direction",
                            "--param", "max_depth=2", "--param", "criterion=entropy")
    assert (code, err) == (0, "")
    assert "class for strategy 'cli': version 2, 79 samples" in out
    code, out, err = nember(*args[:-4], "--type", "reg", "--target", "move")  # the defaults
    assert (code, err) == (0, "")
    assert re.fullmatch(
        r"Trained DecisionTree reg for strategy 'cli': version 1, 80 samples, window 1, "
        r"features point1,point2; hold-out: \w+ -?[\d.e-]+(, \w+ -?[\d.e-]+)+\n", out), out


def test_families_lists_the_installed_ones(nember):
    code, out, err = nember("families")
    assert (code, err) == (0, "")
    rows = [line.split("\t") for line in out.splitlines()]
    assert [row[0] for row in rows] == sorted(installed_families())
    assert all(len(row) == 2 and row[1] for row in rows)
    assert {"DecisionTree", "XGBoost", "LightGBM"} <= {row[0] for row in rows}


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
    (train(model="XGBoost", data="ragged.csv"),
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
    for command in (("serve",), ("keys", "list", "--account", EMAIL)):
        line = one_error_line(nember(*command, config=config))
        assert line.startswith(f"nember: error: {blocker / 'data'}: the data folder can't be "
                               "written: ")


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
