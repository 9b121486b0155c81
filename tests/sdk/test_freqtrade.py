"""The freqtrade strategy inside freqtrade itself, installed from PyPI in a venv of its own.

freqtrade's own ``IStrategy`` runs the strategy's ``advise_indicators``, ``advise_entry`` and
``advise_exit`` on a DataFrame of candles (``run_in_freqtrade.py``), asking a real server;
no exchange is contacted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import require_service, run_cli, write_config

from .test_candles import write_candles

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def freqtrade_python(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("freqtrade") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "freqtrade", str(ROOT / "sdk" / "python")],
        capture_output=True, text=True, timeout=1200)
    require_service(None if installed.returncode == 0 else
                    f"freqtrade does not install here: {installed.stderr.strip()[-300:]}")
    return python


def test_the_strategy_trades_on_nembers_answers_inside_freqtrade(freqtrade_python, tmp_path,
                                                                 servers):
    config = write_config(tmp_path)
    run_cli(config, "accounts", "create", "trader@example.com")
    key = run_cli(config, "keys", "create", "--account", "trader@example.com").stdout.split()[-1]
    candles = tmp_path / "candles.csv"
    write_candles(candles, count=400)
    subprocess.run([sys.executable, "-m", "nember_client.candles", str(candles),
                    str(tmp_path / "features.csv")], check=True, capture_output=True)
    run_cli(config, "train", "--account", "trader@example.com", "--strat", "candles",
            "--model", "XGBoost", "--type", "class", "--data", str(tmp_path / "features.csv"),
            "--target", "direction", "--window", "3", "--skip-warmup")
    server = servers(config)
    env = {**os.environ, "NEMBER_URL": server.url, "NEMBER_KEY": key, "NEMBER_VERSION": "1"}

    def run(mode: str) -> dict:
        ran = subprocess.run(
            [str(freqtrade_python), str(ROOT / "tests" / "sdk" / "run_in_freqtrade.py"),
             str(ROOT / "examples" / "freqtrade" / "nember_strategy.py"), str(candles), mode],
            capture_output=True, text=True, env=env, timeout=300)
        assert ran.returncode == 0, ran.stderr
        return json.loads(ran.stdout.splitlines()[-1])

    backtest = run("backtest")
    assert backtest["isstrategy"] and backtest["rows"] == 400
    assert backtest["asked"] == 400 - 22  # every candle past the warm-up and the window
    assert 0.0 <= backtest["last_up"] <= 1.0
    assert backtest["entries"] + backtest["exits"] > 0
    live = run("dry_run")
    assert live["asked"] == 1 and live["last_up"] == backtest["last_up"]  # the newest only
