"""Test harness: real `nember` processes on loopback ports, real websocket clients.

Tests that need a service the machine lacks skip on a laptop and fail in CI (CI=true).
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from nember_core.testing.data import write_prices  # noqa: F401  (the tests' data too)

NEMBER = str(Path(sys.executable).with_name("nember"))
PASSWORD = "correct horse battery"


def require_service(missing: str | None) -> None:
    """Skip the calling test module when ``missing`` names an absent service; in CI
    (CI=true) that is a failure instead: CI installs every service."""
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"CI=true but a service the tests need is missing: {missing}")
    import pytest

    pytest.skip(missing, allow_module_level=True)


def wait_until(condition, timeout: float = 60.0, what: str = "the condition"):
    """Poll ``condition`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout}s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(
    folder: Path, server: dict | None = None, data_dir: Path | None = None, **sections
) -> Path:
    """A config in ``folder`` with a fresh port; ``server`` and sections override defaults.

    ``data_dir`` lets a second server share another's accounts, keys and models. Trees are
    not compiled unless ``server`` asks: tests/e2e/test_native_trees.py covers compiling, and
    elsewhere it would only take CPU from the tests (and hide the paths it replaces).
    """
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "data_dir": str(data_dir) if data_dir else "data",
        "server": {"host": "127.0.0.1", "port": free_port(), "compile_trees": False,
                   **(server or {})},
        "log": {"level": "info", "format": "json"},
        **sections,
    }
    path = folder / "nember.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(config: Path | None, *args: str, env: dict | None = None, check: bool = True):
    command = [NEMBER, *(["--config", str(config)] if config else []), *args]
    full_env = {**os.environ, "NEMBER_PASSWORD": PASSWORD, **(env or {})}
    result = subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stderr}")
    return result


def banner_key(server: Server, nth: int = 1, timeout: float = 60.0) -> str:
    """The key the demo printed in its ``nth`` banner (runs on one port share a log file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.findall(r"API key: (nmb_\S+)", server.output())
        if len(found) >= nth:
            return found[nth - 1]
        time.sleep(0.1)
    raise AssertionError(f"no key in the demo's output:\n{server.output()}\n{server.log()}")


def warmup_prices(rows: int = 80, gap_at: int | None = None) -> str:
    """Prices with a rolling indicator as a trader exports it: ``sma3``, the mean of the last
    three ``point1``s, is empty on the first two rows (its warm-up), and on data row
    ``gap_at`` too when given."""
    rng = np.random.default_rng(5)
    point1 = rng.normal(0, 1, rows).round(4)
    point2 = rng.normal(0, 1, rows).round(4)
    out = ["point1,point2,sma3,direction,move"]
    for i in range(rows):
        move = 0.7 * point1[i] - 0.4 * point2[i]
        sma = "" if i < 2 or i == gap_at else f"{point1[i - 2 : i + 1].mean():.4f}"
        out.append(f"{point1[i]},{point2[i]},{sma},{'up' if move > 0 else 'down'},{move:.4f}")
    return "\n".join(out) + "\n"


class Server:
    """A `nember serve` (or `nember demo`) process, listening once constructed.

    Tests start servers through the ``servers`` fixture (``module_servers`` in module-scoped
    fixtures), which kills every one it started when the test (or module) ends, however it
    ends. ``on_spawn`` is how the fixture hears of the process as soon as it exists: before
    the wait for it to listen, which may fail.
    """

    def __init__(self, config: Path, command: str = "serve", env: dict | None = None,
                 on_spawn: Callable[[Server], object] | None = None):
        self.config = config
        settings = yaml.safe_load(config.read_text())
        self.port = settings["server"]["port"]
        scheme = "wss" if settings["server"].get("tls") else "ws"
        self.url = f"{scheme}://127.0.0.1:{self.port}/ws"
        self.log_path = config.parent / f"server-{self.port}.log"
        self.out_path = config.parent / f"server-{self.port}.out"
        self._log = open(self.log_path, "ab")
        self._out = open(self.out_path, "ab")
        try:
            self.process = subprocess.Popen(
                [NEMBER, "--config", str(config), command],
                stdout=self._out,
                stderr=self._log,
                env={**os.environ, "NEMBER_PASSWORD": PASSWORD, **(env or {})},
                # A process group of its own: kill() takes the pools it spawned down with it
                # (--workers' workers make their own groups, and die with the supervisor).
                start_new_session=True,
            )
        except BaseException:
            self._close_files()
            raise
        try:
            if on_spawn is not None:
                on_spawn(self)
            self._wait_listening()
        except BaseException:
            self.kill()  # never leave a process behind, whoever started it
            raise

    def _wait_listening(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"server did not listen in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def events(self, name: str) -> list[dict]:
        import json

        found = []
        for line in self.log().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == name:
                found.append(event)
        return found

    def terminate(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._close_files()

    def kill(self) -> None:
        """SIGKILL the server and every process it started (its process group)."""
        if self.process.returncode is None:  # not reaped: the pid, and so the group, is ours
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(30)
        self._close_files()

    def _close_files(self) -> None:
        self._log.close()
        self._out.close()


class Workspace:
    def __init__(self, folder: Path, config: Path, key: str, data: Path):
        self.folder = folder
        self.config = config
        self.key = key
        self.data = data

    def train(self, family: str, model_type: str, strat: str = "example_strategy", *extra: str):
        target = "direction" if model_type == "class" else "move"
        return run_cli(
            self.config, "train", "--account", "trader@example.com", "--strat", strat,
            "--model", family, "--type", model_type, "--data", str(self.data),
            "--target", target, "--window", "2", "--features", "point1,point2", *extra,
        )

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    def new_key(self, name: str = "extra", scope: str = "predict") -> str:
        out = run_cli(self.config, "keys", "create", "--account", "trader@example.com",
                      "--name", name, "--scope", scope).stdout
        return out.strip().splitlines()[-1]



# The families whose library is an optional extra, and that library: `tox -e minimal` runs
# without them, and the tests that name them are skipped there (never in the full install).
OPTIONAL_FAMILIES = {"XGBoost": "xgboost", "LightGBM": "lightgbm", "ONNX": "onnxruntime"}
SKLEARN_FAMILIES = {"DecisionTree", "RandomForest", "ExtraTrees", "GradientBoosting", "Linear"}


def family_installed(name: str) -> bool:
    library = OPTIONAL_FAMILIES.get(name)
    return library is None or importlib.util.find_spec(library) is not None


def needs_family(name: str) -> pytest.MarkDecorator:
    """Skip the test when the family's optional library is not installed."""
    return pytest.mark.skipif(not family_installed(name),
                              reason=f"{name}'s library ({OPTIONAL_FAMILIES.get(name)}) is "
                                     "not installed")


def expected_families() -> set[str]:
    """The first-party families this install must have: scikit-learn's, and each optional
    one whose library is installed."""
    return SKLEARN_FAMILIES | {name for name in OPTIONAL_FAMILIES if family_installed(name)}
