"""Synthetic training data: a small price-like series every test can train on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# The columns of :func:`write_prices`: two features, a class label and a numeric target.
FEATURES = ("point1", "point2")
TARGETS = {"class": "direction", "reg": "move"}


def write_prices(path: Path, rows: int = 300, seed: int = 3) -> Path:
    """Write a CSV of ``rows`` rows in time order: ``point1``, ``point2`` (features),
    ``direction`` (``up``/``down``, for class models) and ``move`` (for reg models)."""
    rng = np.random.default_rng(seed)
    point1 = rng.normal(0, 1, rows).round(4)
    point2 = rng.normal(0, 1, rows).round(4)
    move = 0.7 * point1 - 0.4 * point2 + rng.normal(0, 0.3, rows)
    lines = ["point1,point2,direction,move"]
    for p1, p2, m in zip(point1, point2, move, strict=True):
        lines.append(f"{p1},{p2},{'up' if m > 0 else 'down'},{m:.4f}")
    path.write_text("\n".join(lines) + "\n")
    return path
