"""A freqtrade strategy that asks Nember for the next candle's direction.

Nember is the model server: the model is trained apart from trading (``nember train`` on
candles turned into features by ``nember_client.candles``), pinned to the version the strategy
was tested with, and asked in ``populate_indicators`` with the very features it was trained on.
freqtrade only trades on the answer.

Set up (in freqtrade's environment)::

    pip install ./sdk/python                          # the Nember client SDK
    cp examples/freqtrade/nember_strategy.py user_data/strategies/
    export NEMBER_URL=ws://127.0.0.1:8765/ws NEMBER_KEY=nmb_... NEMBER_VERSION=2
    freqtrade trade --strategy NemberStrategy         # or backtesting, dry-run...

``NEMBER_STRAT``, ``NEMBER_MODEL`` and ``NEMBER_WINDOW`` name the model (``candles``,
``XGBoost``, 3 by default: the README's recipe). Live and in dry-run only the newest candle
is asked; a backtest asks for every candle, pipelined on one connection.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from nember_client import Client
from nember_client import candles as recipe

try:
    from freqtrade.strategy import IStrategy
except ImportError:  # the Nember-facing part below works (and is tested) without freqtrade
    IStrategy = object

URL = os.environ.get("NEMBER_URL", "ws://127.0.0.1:8765/ws")
STRAT = os.environ.get("NEMBER_STRAT", "candles")
MODEL = os.environ.get("NEMBER_MODEL", "XGBoost")
WINDOW = int(os.environ.get("NEMBER_WINDOW", "3"))
VERSION = int(os.environ["NEMBER_VERSION"]) if os.environ.get("NEMBER_VERSION") else None
ENTER = 0.55  # the probability of "up" the strategy wants before it buys
EXIT = 0.45  # ...and under which it sells


def up_probabilities(client: Client, candles: Sequence[Sequence[float]], *, strat: str = STRAT,
                     model: str = MODEL, window: int = WINDOW, version: int | None = VERSION,
                     newest: int | None = None) -> list[float | None]:
    """Nember's probability that each candle is followed by a higher close (``None`` while
    the features warm up, or outside the ``newest`` candles when given)."""
    found = recipe.features(candles)
    first = recipe.WARMUP + window - 1
    if newest is not None:
        first = max(first, len(candles) - newest)
    out: list[float | None] = [None] * len(candles)
    for t in range(first, len(candles)):
        answer = client.predict(strat, model, "class", found[t - window + 1 : t + 1],
                                probabilities=True, model_version=version)
        out[t] = answer.probabilities.get("up")
    return out


class NemberStrategy(IStrategy):
    INTERFACE_VERSION = 3
    timeframe = "1h"
    can_short = False
    minimal_roi = {"0": 0.05}
    stoploss = -0.03
    process_only_new_candles = True
    startup_candle_count = recipe.WARMUP + WINDOW

    def bot_start(self, **kwargs) -> None:
        self.nember = Client(URL, os.environ["NEMBER_KEY"])
        self.nember.connect()  # a wrong URL or key stops the bot here, with the reason

    def populate_indicators(self, dataframe, metadata: dict):
        columns = dataframe[["date", "open", "high", "low", "close", "volume"]]
        candles = [[row.date.timestamp() * 1000, row.open, row.high, row.low, row.close,
                    row.volume] for row in columns.itertuples(index=False)]
        runmode = getattr(self.config.get("runmode"), "value", self.config.get("runmode"))
        live = runmode in ("live", "dry_run")
        dataframe["nember_up"] = up_probabilities(self.nember, candles,
                                                  newest=1 if live else None)
        return dataframe

    def populate_entry_trend(self, dataframe, metadata: dict):
        dataframe.loc[dataframe["nember_up"] >= ENTER, "enter_long"] = 1
        return dataframe

    def populate_exit_trend(self, dataframe, metadata: dict):
        dataframe.loc[dataframe["nember_up"] <= EXIT, "exit_long"] = 1
        return dataframe
