"""A candle loop that trades on Nember's predictions (paper only: it prints what it would do).

On each new candle it computes the features of the last W candles with the very function the
training file was made with (``nember_client.candles``), asks Nember for the class
probabilities of the pinned model version, and goes long when ``up`` is likely enough, short
when ``down`` is, flat otherwise, or when the candle lies outside what the model saw in
training. Needs the SDK: ``.venv/bin/pip install ./sdk/python``.

Replaying a CSV of candles (CCXT's OHLCV layout) as if they arrived live, with a summary of
what following the decisions would have earned (no costs)::

    python examples/candle_bot.py --url ws://127.0.0.1:8765/ws --key nmb_... \\
        --strat candles --model XGBoost --window 3 --replay candles.csv

Live, with ccxt installed (``pip install ccxt``), polling an exchange's closed candles::

    python examples/candle_bot.py ... --exchange binance --symbol BTC/USDT --timeframe 1h
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import datetime, timezone

try:
    from nember_client import AsyncClient, NemberError
    from nember_client import candles as recipe
except ImportError:
    sys.exit("This example needs the Nember client SDK: .venv/bin/pip install ./sdk/python")


def decide(answer, min_confidence: float) -> tuple[int, str]:
    """The position (+1, -1, 0) an answer says to take, and why."""
    up = answer.probabilities.get("up", 0.0)
    down = answer.probabilities.get("down", 0.0)
    if answer.in_distribution is False:
        return 0, "flat: outside what the model saw in training"
    if up >= min_confidence:
        return 1, f"long (up {up:.2f})"
    if down >= min_confidence:
        return -1, f"short (down {down:.2f})"
    return 0, f"flat (up {up:.2f}, down {down:.2f})"


async def ask(client, args, history) -> tuple[int, str, int]:
    answer = await client.predict(
        args.strat, args.model, "class", recipe.latest(history, args.window),
        probabilities=True, details=True, model_version=args.pin)
    position, why = decide(answer, args.min_confidence)
    return position, why, answer.model.version


async def replay(client, args) -> None:
    candles = recipe.read_csv(args.replay)
    start = recipe.WARMUP + args.window
    if len(candles) <= start:
        sys.exit(f"{args.replay}: {len(candles)} candles; need more than {start}")
    earned = held = 1.0
    for t in range(start, len(candles)):
        position, why, version = await ask(client, args, candles[: t + 1])
        stamp = datetime.fromtimestamp(candles[t][0] / 1000, timezone.utc)
        print(f"{stamp:%Y-%m-%d %H:%M} close {candles[t][4]:.2f}: {why} [v{version}]",
              flush=True)
        if t + 1 < len(candles):  # what the next bar paid
            change = candles[t + 1][4] / candles[t][4] - 1.0
            earned *= 1.0 + position * change
            held *= 1.0 + change
    print(f"Replayed {len(candles) - start} candles: following the model {earned - 1:+.2%}, "
          f"buy-and-hold {held - 1:+.2%} (no costs)")


async def live(client, args) -> None:
    import ccxt  # optional: only the live mode needs it

    exchange = getattr(ccxt, args.exchange)()
    seen = None
    while True:
        # The last candle is still forming: decide on the closed ones.
        candles = exchange.fetch_ohlcv(args.symbol, args.timeframe,
                                       limit=recipe.WARMUP + args.window + 1)[:-1]
        if candles and candles[-1][0] != seen:
            seen = candles[-1][0]
            position, why, version = await ask(client, args, candles)
            print(f"{args.symbol} {args.timeframe} close {candles[-1][4]}: {why} [v{version}]",
                  flush=True)
        time.sleep(10)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8765/ws")
    parser.add_argument("--key", required=True, help="an API key (scope predict is enough)")
    parser.add_argument("--strat", default="candles", help="the strategy the model was trained for")
    parser.add_argument("--model", default="XGBoost", help="its family")
    parser.add_argument("--window", type=int, default=3, help="its window (default: 3)")
    parser.add_argument("--pin", type=int, metavar="VERSION",
                        help="the model version your strategy was tested with (default: newest)")
    parser.add_argument("--min-confidence", type=float, default=0.55,
                        help="the probability a side needs before the bot takes it")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--replay", metavar="CANDLES.csv", help="replay these candles")
    source.add_argument("--exchange", help="a ccxt exchange id, e.g. binance (live)")
    parser.add_argument("--symbol", default="BTC/USDT")
    parser.add_argument("--timeframe", default="1h")
    args = parser.parse_args()
    try:
        async with AsyncClient(args.url, args.key) as client:
            await (replay(client, args) if args.replay else live(client, args))
    except NemberError as exc:
        print(f"Nember: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(0)
