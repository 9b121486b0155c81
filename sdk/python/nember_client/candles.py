"""Features from OHLCV candles, the same at training and at prediction time.

Candles are in CCXT's ``fetch_ohlcv`` layout: ``[timestamp_ms, open, high, low, close,
volume]``, oldest first. :func:`features` turns each candle into the feature values a model is
trained on and asked with, from that candle and the ones before it only; the first
``WARMUP`` candles have none yet. :func:`labels` gives each candle's targets from the next one.

A bot computes its requests with the very function the training file was made with, so the
model never sees features computed one way in training and another way live.

From a CSV of candles to a training file (the last candle has no next one: it is left out;
the warm-up rows have empty features, for ``nember train --skip-warmup``)::

    python -m nember_client.candles candles.csv features.csv
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Sequence

# The features, in the order a training file has them; each uses at most WARMUP candles back.
FEATURES = ("ret_1", "ret_5", "sma_ratio_10", "range", "rsi_14", "volume_z_20")
WARMUP = 20  # candles before the first one with every feature
LABELS = ("next_return", "direction")

Candle = Sequence[float]  # timestamp, open, high, low, close, volume


def features(candles: Sequence[Candle]) -> list[dict[str, float] | None]:
    """Each candle's features (``None`` while they warm up), from it and earlier ones."""
    closes = [float(c[4]) for c in candles]
    out: list[dict[str, float] | None] = []
    for t, candle in enumerate(candles):
        if t < WARMUP:
            out.append(None)
            continue
        close, high, low, volume = closes[t], float(candle[2]), float(candle[3]), float(candle[5])
        window = closes[t - 9 : t + 1]
        volumes = [float(c[5]) for c in candles[t - 19 : t + 1]]
        mean_volume = sum(volumes) / len(volumes)
        spread = math.sqrt(sum((v - mean_volume) ** 2 for v in volumes) / len(volumes))
        out.append({
            "ret_1": close / closes[t - 1] - 1.0,
            "ret_5": close / closes[t - 5] - 1.0,
            "sma_ratio_10": close / (sum(window) / len(window)) - 1.0,
            "range": (high - low) / close,
            "rsi_14": _rsi(closes[t - 14 : t + 1]),
            "volume_z_20": (volume - mean_volume) / spread if spread > 0 else 0.0,
        })
    return out


def latest(candles: Sequence[Candle], window: int) -> list[dict[str, float]]:
    """The DataPoints of a request for the newest candle: the last ``window`` candles'
    features, oldest first. Needs ``WARMUP + window`` candles at least."""
    if len(candles) < WARMUP + window:
        raise ValueError(f"need {WARMUP + window} candles for a window of {window}, "
                         f"got {len(candles)}")
    found = features(candles[-(WARMUP + window):])
    return [point for point in found[-window:] if point is not None]


def labels(candles: Sequence[Candle]) -> list[dict[str, float | str] | None]:
    """Each candle's targets: the return to the next close, and whether it rose; ``None``
    for the last candle (no next one yet)."""
    closes = [float(c[4]) for c in candles]
    out: list[dict[str, float | str] | None] = []
    for t in range(len(closes)):
        if t + 1 >= len(closes):
            out.append(None)
            continue
        change = closes[t + 1] / closes[t] - 1.0
        out.append({"next_return": change, "direction": "up" if change > 0 else "down"})
    return out


def _rsi(closes: Sequence[float]) -> float:
    """The relative strength index over these closes' changes (simple averages), 0 to 100."""
    gains = losses = 0.0
    for before, after in zip(closes, closes[1:], strict=False):
        change = after - before
        if change > 0:
            gains += change
        else:
            losses -= change
    if gains + losses == 0:
        return 50.0
    return 100.0 * gains / (gains + losses)


def read_csv(path: str) -> list[list[float]]:
    """Candles from a CSV in CCXT's layout, with or without a header row."""
    with open(path, newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if rows and not _numeric(rows[0][0]):
        rows = rows[1:]
    candles = []
    for line, row in enumerate(rows, start=1):
        if len(row) < 6:
            raise ValueError(f"{path}: row {line} has {len(row)} values; expected timestamp, "
                             "open, high, low, close, volume")
        candles.append([float(value) for value in row[:6]])
    return candles


def write_training_csv(candles: Sequence[Candle], path: str) -> int:
    """The training file: timestamp, the features (empty while they warm up), the labels;
    without the last candle, which has no label. Returns the rows written."""
    found, targets = features(candles), labels(candles)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", *FEATURES, *LABELS])
        rows = 0
        for candle, point, target in zip(candles, found, targets, strict=True):
            if target is None:
                continue
            values = ["" if point is None else f"{point[name]:.8g}" for name in FEATURES]
            writer.writerow([int(candle[0]), *values, f"{target['next_return']:.8g}",
                             target["direction"]])
            rows += 1
    return rows


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m nember_client.candles CANDLES.csv FEATURES.csv", file=sys.stderr)
        return 2
    try:
        rows = write_training_csv(read_csv(args[0]), args[1])
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Wrote {rows} rows to {args[1]}: features {', '.join(FEATURES)} (empty on the "
          f"first {WARMUP} rows: train with --skip-warmup), labels {', '.join(LABELS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
