"""How a model would have done on data it never saw: walk-forward over time-ordered folds.

The samples are cut into ``folds + 1`` consecutive blocks. Fold k tests on block k a model
fitted on every sample before it but the last ``purge``: a sample's label looks ``horizon``
rows ahead and its window ``window - 1`` rows back, so a training span ends ``horizon + window
- 1`` samples before its test block, and no training sample's label or window reaches into
what is tested. Nothing after a test block is trained on for it (the embargo after a fold is
the whole future). The scores of every fold's predictions together are the model's; the model
that serves is fitted on all samples afterwards, as before.

Class models are scored on accuracy, balanced accuracy, log loss, hit rate and precision at
coverage levels (only the most confident predictions) and a calibration table; regression on
MAE, RMSE, R² and the directional hit rate. Given each row's next-bar return, a naive
follow-the-signal backtest runs per fold against buy-and-hold.

Everything returned is plain JSON (stored with the model version).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

from nember_core.plugin_api import ModelFamily

from . import backtest

MIN_BLOCK = 5  # samples a test block must have; fewer folds are made rather than smaller
MIN_TRAIN = 10  # samples a fold's training span must have, or the fold is skipped
COVERAGE = (0.1, 0.25, 0.5, 1.0)  # the most confident fractions scored on their own
CALIBRATION_BINS = 10
DIGITS = 6

Fit = Callable[[np.ndarray, np.ndarray], Any]
Progress = Callable[[float, str], None]


@attrs.frozen
class Settings:
    folds: int = 5
    horizon: int = 1  # rows a label looks ahead (the purge gap's part for labels)
    bars_per_year: float = 252.0  # for the Sharpe ratio: 252 daily bars, 8760 hourly...


@attrs.frozen
class Fold:
    number: int
    train_end: int  # training samples: [0, train_end)
    test_start: int
    test_end: int  # tested samples: [test_start, test_end)


def plan(samples: int, window: int, settings: Settings) -> tuple[list[Fold], int]:
    """The folds for ``samples`` samples, and the purge (samples left out before each)."""
    purge = settings.horizon + window - 1
    folds = min(settings.folds, samples // MIN_BLOCK - 1)
    if folds < 1:
        return [], purge
    block = samples // (folds + 1)
    planned = []
    for k in range(1, folds + 1):
        start = samples - (folds + 1 - k) * block  # the last block ends at the last sample
        end = start + block
        planned.append(Fold(k, max(0, start - purge), start, end))
    return planned, purge


def walk_forward(family: ModelFamily, fit: Fit, X: np.ndarray, y: np.ndarray,
                 model_type: str, classes: tuple | None, window: int, settings: Settings,
                 returns: np.ndarray | None, report: Progress) -> dict[str, Any]:
    """Fit and score every fold; the evaluation as stored with the model."""
    folds, purge = plan(len(y), window, settings)
    evaluation: dict[str, Any] = {
        "method": "walk-forward", "folds": [], "horizon": settings.horizon, "purge": purge,
        "notes": [],
    }
    if returns is not None and len(returns) and float(np.abs(returns).max()) >= 1.0:
        evaluation["notes"].append(
            "no backtest: a return of 100% or more in one bar; give returns as fractions "
            "(0.01 for 1%), not percent or basis points")
        returns = None
    if not folds:
        evaluation["notes"].append(f"only {len(y)} samples: too few to evaluate")
        return evaluation
    tested: list[np.ndarray] = []
    predicted: list[np.ndarray] = []
    probabilities: list[np.ndarray] = []
    for fold in folds:
        report(0.1 + 0.5 * (fold.number - 1) / len(folds),
               f"walk-forward: fold {fold.number} of {len(folds)}")
        train_y = y[: fold.train_end]
        if fold.train_end < MIN_TRAIN:
            evaluation["notes"].append(f"fold {fold.number}: fewer than {MIN_TRAIN} samples "
                                       "to train on: skipped")
            continue
        if model_type == "class" and len(np.unique(train_y)) < len(classes or ()):
            evaluation["notes"].append(f"fold {fold.number}: a class is missing from its "
                                       "training span: skipped")
            continue
        model = fit(X[: fold.train_end], train_y)
        test = slice(fold.test_start, fold.test_end)
        guesses = np.asarray(family.predict(model, model_type, X[test]))
        proba = _probabilities(family, model, model_type, X[test], len(classes or ()))
        scores = score(model_type, y[test], guesses, proba, len(classes or ()))
        entry: dict[str, Any] = {
            "fold": fold.number, "train": [0, fold.train_end],
            "test": [fold.test_start, fold.test_end], "metrics": scores,
        }
        if returns is not None:
            positions = backtest.positions(model_type, guesses, classes)
            if positions is not None:
                entry["backtest"] = backtest.summary(positions, returns[test],
                                                     settings.bars_per_year)
                entry["backtest"]["buy_and_hold_return"] = backtest.held_return(returns[test])
        evaluation["folds"].append(entry)
        tested.append(y[test])
        predicted.append(guesses)
        if proba is not None:
            probabilities.append(proba)
    if not tested:
        return evaluation
    truth, guesses = np.concatenate(tested), np.concatenate(predicted)
    proba = np.concatenate(probabilities) if len(probabilities) == len(tested) else None
    evaluation["metrics"] = score(model_type, truth, guesses, proba, len(classes or ()))
    evaluation["tested"] = int(len(truth))
    if model_type == "class" and proba is not None:
        evaluation["coverage"] = coverage(truth, guesses, proba)
        evaluation["calibration"] = calibration(truth, guesses, proba)
    if returns is not None:
        evaluation["backtest"] = _pooled_backtest(model_type, evaluation, classes, returns,
                                                  guesses, settings)
    return evaluation


def _probabilities(family, model, model_type: str, X: np.ndarray,
                   n_classes: int) -> np.ndarray | None:
    """Each row's class probabilities through the family's own ``proba`` (what a request
    asking for probabilities gets), or None when the family gives none."""
    if model_type != "class":
        return None
    predictor = family.predictor(model, model_type)
    proba = getattr(predictor, "proba", None)
    if proba is None:
        return None
    out = np.empty((len(X), n_classes))
    for i in range(len(X)):
        out[i] = proba(X[i : i + 1])
    return out


def score(model_type: str, truth: np.ndarray, guesses: np.ndarray,
          proba: np.ndarray | None, n_classes: int) -> dict[str, Any]:
    if model_type == "class":
        return _class_scores(truth, guesses.astype(np.int64), proba, n_classes)
    return _reg_scores(truth.astype(np.float64), guesses.astype(np.float64))


def _class_scores(truth, guesses, proba, n_classes: int) -> dict[str, Any]:
    recalls = [float(np.mean(guesses[truth == c] == c)) for c in range(n_classes)
               if np.any(truth == c)]
    scores: dict[str, Any] = {
        "accuracy": _round(np.mean(guesses == truth)),
        "balanced_accuracy": _round(np.mean(recalls)),
    }
    if proba is not None:
        picked = np.clip(proba[np.arange(len(truth)), truth], 1e-15, 1.0)
        scores["log_loss"] = _round(-np.mean(np.log(picked)))
    return scores


def _reg_scores(truth, guesses) -> dict[str, Any]:
    errors = guesses - truth
    variance = float(np.var(truth))
    moved = truth != 0
    return {
        "mae": _round(np.mean(np.abs(errors))),
        "rmse": _round(math.sqrt(float(np.mean(errors**2)))),
        "r2": _round(1.0 - float(np.mean(errors**2)) / variance) if variance > 0 else None,
        # How often the predicted sign is the actual one (rows that moved at all).
        "hit_rate": (_round(np.mean(np.sign(guesses[moved]) == np.sign(truth[moved])))
                     if moved.any() else None),
    }


def coverage(truth, guesses, proba) -> list[dict[str, Any]]:
    """Hit rate and precision of the most confident predictions only: a bot that trades
    only on those sees these. Precision: of the confident predictions of the last class
    (``up``, ``1``: the labels' sorted order), the share that was right (binary only)."""
    confidence = proba.max(axis=1)
    order = np.argsort(-confidence, kind="stable")
    binary = proba.shape[1] == 2
    levels = []
    for fraction in COVERAGE:
        count = max(1, int(round(len(order) * fraction)))
        chosen = order[:count]
        right = guesses[chosen] == truth[chosen]
        level: dict[str, Any] = {"coverage": fraction, "predictions": int(count),
                                 "min_confidence": _round(confidence[chosen].min()),
                                 "hit_rate": _round(np.mean(right))}
        if binary:
            said = guesses[chosen] == 1
            level["precision"] = _round(np.mean(right[said])) if said.any() else None
        levels.append(level)
    return levels


def calibration(truth, guesses, proba) -> list[dict[str, Any]]:
    """Predictions grouped by their confidence (the chosen class's probability): how often
    each group was right. A calibrated model's groups are right as often as they say."""
    confidence = proba.max(axis=1)
    edges = np.linspace(1.0 / proba.shape[1], 1.0, CALIBRATION_BINS + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0,
                   CALIBRATION_BINS - 1)
    table = []
    for b in range(CALIBRATION_BINS):
        inside = bins == b
        if not inside.any():
            continue
        table.append({"from": _round(edges[b]), "to": _round(edges[b + 1]),
                      "predictions": int(inside.sum()),
                      "confidence": _round(confidence[inside].mean()),
                      "hit_rate": _round(np.mean(guesses[inside] == truth[inside]))})
    return table


def _pooled_backtest(model_type, evaluation, classes, returns, guesses,
                     settings: Settings) -> dict[str, Any] | None:
    """The backtest over every tested sample in time order, with its equity curves."""
    positions = backtest.positions(model_type, guesses, classes)
    if positions is None:
        evaluation["notes"].append(
            "no backtest: no class label says long or short (name them up/down, buy/sell, "
            "long/short, or use numbers whose sign says it)")
        return None
    tested = [slice(*entry["test"]) for entry in evaluation["folds"]]
    pooled_returns = np.concatenate([returns[part] for part in tested])
    return backtest.report(positions, pooled_returns, settings.bars_per_year)


def _round(value) -> float:
    return round(float(value), DIGITS)
