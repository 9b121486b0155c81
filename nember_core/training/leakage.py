"""Features that know the answer: caught before they are trained on, and said out loud.

A column computed from later rows (``next_return``, a ``fwd_ret``) predicts the target of its
own row almost perfectly, trains a model that scores 1.0, and then serves nonsense: at
prediction time nobody has the next bar yet. Two signs give such a column away:

- its name says so (``next``, ``fwd``, ``future``, ``lead``, ``ahead``...);
- its values do: on its own it predicts the target almost perfectly, while its value on the
  row before does not (so it is not a persistent quantity like a price level, which predicts
  the next price well from either row).

Default features (none named) leave such columns out, with a warning. Features a user named
are kept, with the same warning; so are scores too good to be true.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

FUTURE_NAME = re.compile(
    r"(^|[^a-z])(next|fwd|forward|future|lead|ahead|tomorrow|upcoming)([^a-z]|$)", re.I)
ALONE = 0.98  # a feature scoring this on its own predicts the target "almost perfectly"
LAGGED = 0.9  # ...and, from the row before, under this: it knows the row's future
TOO_GOOD = 0.97  # out-of-sample accuracy or R² this high is checked, and said


def future_name(name: str) -> bool:
    return FUTURE_NAME.search(name) is not None


def alone_score(x: np.ndarray, y: np.ndarray, model_type: str) -> float:
    """How well one feature predicts the target by itself, 0 to 1. For classes: ordered by
    the feature, how rarely the class changes from one sample to the next (a feature that
    separates the classes with a few thresholds scores about 1; an unrelated one, on two
    balanced classes, about 0.5). For numbers: the larger of the absolute Pearson and
    Spearman correlations."""
    if len(x) < 10 or np.ptp(x) == 0:
        return 0.0
    if model_type == "class":
        ordered = np.asarray(y)[np.argsort(x, kind="stable")]
        changes = np.count_nonzero(ordered[1:] != ordered[:-1])
        return 1.0 - changes / (len(ordered) - 1)
    yf = y.astype(np.float64)
    if np.ptp(yf) == 0:
        return 0.0
    pearson = abs(float(np.corrcoef(x, yf)[0, 1]))
    spearman = abs(float(np.corrcoef(_ranks(x), _ranks(yf))[0, 1]))
    return max(pearson, spearman)


def _ranks(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values, kind="stable"), kind="stable").astype(np.float64)


def knows_the_future(x: np.ndarray, y: np.ndarray, model_type: str) -> tuple[float, float]:
    """The feature's score on its own row's target, and its previous row's value's."""
    return alone_score(x, y, model_type), alone_score(x[:-1], y[1:], model_type)


def inspect(features: tuple[str, ...], X: np.ndarray, y: np.ndarray,
            model_type: str) -> dict[str, str]:
    """The features that look like they come from the future, each with why."""
    found = {}
    for i, name in enumerate(features):
        if future_name(name):
            found[name] = (f"feature {name!r} is named like a value from a later row; at "
                           "prediction time nobody has it")
            continue
        own, lagged = knows_the_future(X[:, i], np.asarray(y), model_type)
        if own >= ALONE and lagged < LAGGED:
            found[name] = (f"feature {name!r} predicts the target on its own "
                           f"({own:.2f}) but not from the row before ({lagged:.2f}): it "
                           "looks computed from later rows")
        elif own >= ALONE:
            found[name] = (f"feature {name!r} predicts the target almost perfectly on its own "
                           f"({own:.2f}): is the target a copy of it, or a level rather than a "
                           "change?")
    return found


def too_good(model_type: str, metrics: dict[str, Any]) -> str | None:
    """A warning when out-of-sample scores are too good to be true for market data."""
    if model_type == "class":
        accuracy = metrics.get("balanced_accuracy") or 0.0
        if accuracy >= TOO_GOOD:
            return (f"out-of-sample balanced accuracy {accuracy:.2f} is too good to be true "
                    "for market data: check the features for values from later rows")
        return None
    r2 = metrics.get("r2")
    if r2 is not None and r2 >= TOO_GOOD:
        return (f"out-of-sample R² {r2:.2f} is too good to be true for market data: check "
                "the features for values from later rows, and whether the target is a "
                "price level (predict its change instead)")
    return None
