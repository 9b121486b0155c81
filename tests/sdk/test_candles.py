"""From exported candles to a served model in three commands, and the recipe's features.

``python -m nember_client.candles`` makes the training file, ``nember train`` trains it
(walk-forward, backtest on the next-bar returns), and ``examples/candle_bot.py`` replays the
candles against a server, asking with the same features the training file has.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from nember_client import Client
from nember_client import candles as recipe

from tests.harness import run_cli, write_config

ROOT = Path(__file__).resolve().parents[2]
HOUR_MS = 3_600_000


def write_candles(path: Path, count: int = 600, seed: int = 11) -> list[list[float]]:
    """An hourly random walk in CCXT's OHLCV layout, with a header as exports have."""
    rng = np.random.default_rng(seed)
    close = 100 * np.cumprod(1 + rng.normal(0, 0.004, count))
    rows = []
    for t in range(count):
        open_ = close[t - 1] if t else close[0]
        high = max(open_, close[t]) * (1 + abs(rng.normal(0, 0.002)))
        low = min(open_, close[t]) * (1 - abs(rng.normal(0, 0.002)))
        rows.append([1_767_225_600_000 + t * HOUR_MS, round(open_, 4), round(high, 4),
                     round(low, 4), round(close[t], 4), round(float(rng.uniform(5, 50)), 3)])
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "open", "high", "low", "close", "volume"])
        writer.writerows(rows)
    return rows


def test_the_features_use_only_the_candle_and_earlier_ones(tmp_path):
    candles = write_candles(tmp_path / "c.csv", count=60)
    found = recipe.features(candles)
    assert found[: recipe.WARMUP] == [None] * recipe.WARMUP
    t = 30
    closes = [c[4] for c in candles]
    assert found[t]["ret_1"] == pytest.approx(closes[t] / closes[t - 1] - 1)
    assert found[t]["ret_5"] == pytest.approx(closes[t] / closes[t - 5] - 1)
    assert found[t]["sma_ratio_10"] == pytest.approx(closes[t] / np.mean(closes[t - 9: t + 1]) - 1)
    assert found[t]["range"] == pytest.approx((candles[t][2] - candles[t][3]) / closes[t])
    assert 0 <= found[t]["rsi_14"] <= 100
    volumes = np.array([c[5] for c in candles[t - 19: t + 1]])
    assert found[t]["volume_z_20"] == pytest.approx((candles[t][5] - volumes.mean())
                                                    / volumes.std())
    # Changing a later candle changes nothing before it: no look-ahead.
    changed = [list(c) for c in candles]
    changed[t + 1][4] *= 2
    assert recipe.features(changed)[: t + 1] == found[: t + 1]
    # A request's points are the training rows' features, for the same candles.
    assert recipe.latest(candles[: t + 1], 3) == found[t - 2: t + 1]
    with pytest.raises(ValueError, match="need 23 candles for a window of 3"):
        recipe.latest(candles[:22], 3)


def test_the_training_file_has_labels_from_the_next_candle_and_no_last_row(tmp_path):
    candles = write_candles(tmp_path / "c.csv", count=40)
    out = tmp_path / "f.csv"
    assert recipe.write_training_csv(recipe.read_csv(str(tmp_path / "c.csv")), str(out)) == 39
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["timestamp", *recipe.FEATURES, "next_return", "direction"]
    assert all(rows[i]["ret_1"] == "" for i in range(recipe.WARMUP))
    assert rows[recipe.WARMUP]["ret_1"] != ""
    change = candles[5][4] / candles[4][4] - 1
    assert math.isclose(float(rows[4]["next_return"]), change, rel_tol=1e-6)
    assert rows[4]["direction"] == ("up" if change > 0 else "down")


@pytest.mark.e2e
def test_from_candles_to_a_served_model_in_three_commands(tmp_path, servers):
    config = write_config(tmp_path)
    run_cli(config, "accounts", "create", "trader@example.com")
    key = run_cli(config, "keys", "create", "--account", "trader@example.com").stdout.split()[-1]
    write_candles(tmp_path / "candles.csv")

    # 1. The training file from the candles.
    made = subprocess.run([sys.executable, "-m", "nember_client.candles",
                           str(tmp_path / "candles.csv"), str(tmp_path / "features.csv")],
                          capture_output=True, text=True, check=True)
    assert made.stdout.startswith("Wrote 599 rows to ")
    # 2. Train: the default features are the recipe's (not the timestamp, not the returns).
    trained = run_cli(config, "train", "--account", "trader@example.com", "--strat",
                      "candles", "--model", "XGBoost", "--type", "class", "--data",
                      str(tmp_path / "features.csv"), "--target", "direction", "--window", "3",
                      "--returns", "next_return", "--skip-warmup", "--bars-per-year", "8760")
    assert (f"features {','.join(recipe.FEATURES)}\n" in trained.stdout
            and "(20 warm-up rows skipped)" in trained.stdout), trained.stdout
    assert "Backtest, following the signal vs buy-and-hold: return" in trained.stdout
    # 3. The bot, replaying the candles against a server, pinned to version 1.
    server = servers(config)
    bot = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "candle_bot.py"), "--url", server.url,
         "--key", key, "--strat", "candles", "--model", "XGBoost", "--window", "3",
         "--pin", "1", "--replay", str(tmp_path / "candles.csv")],
        capture_output=True, text=True, timeout=120)
    assert bot.returncode == 0, bot.stderr
    lines = bot.stdout.splitlines()
    assert len(lines) == 600 - 23 + 1
    decision = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d close \d+\.\d\d: "
                          r"(long \(up [01]\.\d\d\)|short \(down [01]\.\d\d\)|flat.*) \[v1\]")
    assert all(decision.fullmatch(line) for line in lines[:-1]), lines[:3]
    assert re.fullmatch(r"Replayed 577 candles: following the model [+-]\d+\.\d\d%, "
                        r"buy-and-hold [+-]\d+\.\d\d% \(no costs\)", lines[-1])

    # The freqtrade strategy's Nember-facing part, on the same server and candles.
    strategy = _load_example("freqtrade/nember_strategy.py")
    candles = recipe.read_csv(str(tmp_path / "candles.csv"))[:120]
    with Client(server.url, key) as client:
        ups = strategy.up_probabilities(client, candles, strat="candles", model="XGBoost",
                                        window=3, version=1)
        assert ups[:22] == [None] * 22  # the warm-up, and a window's first points
        assert all(0.0 <= up <= 1.0 for up in ups[22:])
        direct = client.predict("candles", "XGBoost", "class", recipe.latest(candles, 3),
                                probabilities=True, model_version=1)
        assert ups[-1] == direct.probabilities["up"]
        newest = strategy.up_probabilities(client, candles, strat="candles", model="XGBoost",
                                           window=3, version=1, newest=1)
        assert newest[:-1] == [None] * 119 and newest[-1] == ups[-1]  # live: one request


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location("example", ROOT / "examples" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
