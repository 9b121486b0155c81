"""A naive follow-the-signal backtest: long, short or flat on each bar as the model says.

Each tested row's position (+1 long, -1 short, 0 flat) earns that row's next-bar return (the
``--returns`` column: the return from this bar to the next). No costs, no slippage, no
sizing: a first look at whether the signal is worth more work, set against buy-and-hold over
the same bars.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

CURVE_POINTS = 200  # equity curves are stored at most this long (every k-th bar)
LONG = frozenset({"up", "long", "buy", "bull", "bullish", "rise", "higher"})
SHORT = frozenset({"down", "short", "sell", "bear", "bearish", "fall", "lower"})
DIGITS = 6


def label_position(label: Any) -> int:
    """What a class label says to hold: its sign for a number, its meaning for a word."""
    if isinstance(label, (int, float)) and not isinstance(label, bool):
        return int(np.sign(label))
    word = str(label).strip().lower()
    return 1 if word in LONG else -1 if word in SHORT else 0


def positions(model_type: str, guesses: np.ndarray, classes: tuple | None) -> np.ndarray | None:
    """The position of each prediction; None when no class label says long or short."""
    if model_type == "reg":
        return np.sign(guesses.astype(np.float64))
    if classes is None:  # a class model always has its labels; without them, none says so
        return None
    table = np.array([label_position(label) for label in classes], dtype=np.float64)
    if not table.any():
        return None
    return table[guesses.astype(np.int64)]


def summary(held: np.ndarray, returns: np.ndarray, bars_per_year: float) -> dict[str, Any]:
    """Cumulative return, Sharpe ratio, maximum drawdown and trades of holding ``held``."""
    earned = held * returns
    equity = np.cumprod(1.0 + earned)
    std = float(np.std(earned))
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))
    drawdown = 1.0 - np.concatenate([[1.0], equity]) / peak
    previous = np.concatenate([[0.0], held[:-1]])
    return {
        "return": _round(equity[-1] - 1.0) if len(equity) else 0.0,
        "sharpe": (_round(float(np.mean(earned)) / std * math.sqrt(bars_per_year))
                   if std > 0 else None),
        "max_drawdown": _round(drawdown.max()),
        "trades": int(np.count_nonzero(held != previous)),
        "bars": int(len(held)),
    }


def held_return(returns: np.ndarray) -> float:
    """Buy-and-hold's cumulative return over these bars."""
    return _round(np.prod(1.0 + returns) - 1.0)


def report(held: np.ndarray, returns: np.ndarray, bars_per_year: float) -> dict[str, Any]:
    """The strategy and buy-and-hold over the same bars, with both equity curves."""
    hold = np.ones_like(returns)
    step = max(1, math.ceil(len(returns) / CURVE_POINTS))
    return {
        "strategy": summary(held, returns, bars_per_year),
        "buy_and_hold": summary(hold, returns, bars_per_year),
        "equity": {
            "every": step,
            "strategy": _curve(held * returns, step),
            "buy_and_hold": _curve(returns, step),
        },
    }


def _curve(earned: np.ndarray, step: int) -> list[float]:
    equity = np.cumprod(1.0 + earned)
    return [_round(v) for v in equity[step - 1 :: step]]


def _round(value) -> float:
    return round(float(value), DIGITS)
