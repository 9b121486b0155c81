"""Synthetic data for checking predictors against the libraries' own ``predict``."""

from __future__ import annotations

import numpy as np


def dataset(seed: int):
    """Five features; binary, multi-class and regression targets; 2,000 rows to predict,
    the first 100 right on or next to training values (where thresholds sit)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(1500, 5))
    targets = {
        "binary": ("class", (X[:, 0] + 0.5 * rng.normal(size=1500) > 0).astype(np.int64)),
        "multiclass": ("class",
                       np.digitize(X[:, 0] + X[:, 1], [-1.0, 0.0, 1.0]).astype(np.int64)),
        "reg": ("reg", 3 * X[:, 0] + X[:, 1] ** 2 + 0.1 * rng.normal(size=1500)),
    }
    rows = rng.normal(size=(2000, 5)) * 1.5
    rows[:50] = np.round(X[:50], 1)
    rows[50:100] = X[50:100]
    return X, targets, rows
