"""Run the Nember strategy through freqtrade's own IStrategy machinery on a CSV of candles.

Run by tests/sdk/test_freqtrade.py with the python of a venv where freqtrade is installed:
run_in_freqtrade.py STRATEGY.py CANDLES.csv RUNMODE; prints a JSON summary.
"""

import importlib.util
import json
import sys

import pandas as pd
from freqtrade.enums import RunMode
from freqtrade.strategy import IStrategy

strategy_file, candles_csv, runmode = sys.argv[1:4]
spec = importlib.util.spec_from_file_location("nember_strategy", strategy_file)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
frame = pd.read_csv(candles_csv)
frame["date"] = pd.to_datetime(frame["timestamp"], unit="ms", utc=True)
frame = frame[["date", "open", "high", "low", "close", "volume"]]
strategy = module.NemberStrategy({"runmode": RunMode(runmode), "stake_currency": "USDT",
                                  "timeframe": "1h"})
strategy.bot_start()
metadata = {"pair": "BTC/USDT"}
frame = strategy.advise_indicators(frame, metadata)
frame = strategy.advise_entry(frame, metadata)
frame = strategy.advise_exit(frame, metadata)
strategy.nember.close()
print(json.dumps({
    "asked": int(frame["nember_up"].notna().sum()),
    "rows": len(frame),
    "last_up": None if pd.isna(last_up := frame["nember_up"].iloc[-1]) else float(last_up),
    "entries": int(frame.get("enter_long", pd.Series(dtype=float)).fillna(0).sum()),
    "exits": int(frame.get("exit_long", pd.Series(dtype=float)).fillna(0).sum()),
    "isstrategy": isinstance(strategy, IStrategy),
}))
