"""The walk-forward evaluation's parts: folds that can't leak, scores, backtest, leakage."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nember_core.training import backtest, leakage
from nember_core.training.evaluation import Settings, calibration, coverage, plan


@given(samples=st.integers(0, 5000), window=st.integers(1, 50), horizon=st.integers(0, 30),
       folds=st.integers(1, 20))
def test_no_training_sample_reaches_into_the_fold_it_is_tested_on(samples, window, horizon,
                                                                  folds):
    planned, purge = plan(samples, window, Settings(folds=folds, horizon=horizon))
    assert purge == horizon + window - 1
    assert len(planned) <= folds
    previous_end = None
    for fold in planned:
        # The last training sample's label looks `horizon` rows ahead; the first tested
        # sample's window starts `window - 1` rows back: neither reaches the other.
        if fold.train_end > 0:  # else nothing trains: the fold is skipped
            assert (fold.train_end - 1) + horizon < fold.test_start - (window - 1)
        assert fold.test_end - fold.test_start >= 5
        if previous_end is not None:
            assert fold.test_start == previous_end  # consecutive, in time order
        previous_end = fold.test_end
    if planned:
        assert planned[-1].test_end == samples  # the newest samples are tested


def test_too_few_samples_make_no_folds():
    assert plan(9, 1, Settings())[0] == []
    assert len(plan(10, 1, Settings())[0]) == 1


def test_the_backtest_by_hand():
    held = np.array([1.0, -1.0, 0.0, 1.0])
    returns = np.array([0.1, 0.1, 0.5, -0.1])
    result = backtest.summary(held, returns, bars_per_year=4)
    # Earned 0.1, -0.1, 0, -0.1: equity 1.1, 0.99, 0.99, 0.891.
    assert result["return"] == pytest.approx(-0.109)
    assert result["max_drawdown"] == pytest.approx(1 - 0.891 / 1.1, abs=1e-6)
    assert result["trades"] == 4  # in, flip, out, in
    earned = held * returns
    assert result["sharpe"] == pytest.approx(earned.mean() / earned.std() * 2, abs=1e-6)
    assert backtest.held_return(returns) == pytest.approx(1.1 * 1.1 * 1.5 * 0.9 - 1)


@pytest.mark.parametrize("label,position", [
    (1, 1), (0, 0), (-1, -1), (2.5, 1), ("up", 1), ("Down", -1), ("BUY", 1), ("sell", -1),
    ("flat", 0), ("hold", 0),
])
def test_class_labels_say_what_to_hold(label, position):
    assert backtest.label_position(label) == position


def test_labels_that_say_nothing_make_no_backtest():
    assert backtest.positions("class", np.array([0, 1]), ("red", "blue")) is None
    held = backtest.positions("class", np.array([0, 1, 1]), ("down", "up"))
    assert held.tolist() == [-1.0, 1.0, 1.0]


def test_coverage_scores_the_most_confident_first():
    truth = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1, 0])
    guesses = np.array([1, 0, 1, 0, 1, 1, 0, 1, 0, 1])  # the confident half is right
    confidence = np.array([0.99, 0.98, 0.97, 0.96, 0.95, 0.6, 0.59, 0.58, 0.57, 0.56])
    proba = np.column_stack([1 - confidence, confidence])
    levels = {level["coverage"]: level for level in coverage(truth, guesses, proba)}
    assert levels[0.5]["hit_rate"] == 1.0 and levels[0.5]["predictions"] == 5
    assert levels[1.0]["hit_rate"] == 0.5
    assert levels[0.5]["precision"] == 1.0  # its "1" predictions were all right
    table = calibration(truth, guesses, proba)
    assert sum(row["predictions"] for row in table) == 10
    assert table[-1]["hit_rate"] == 1.0 and table[-1]["confidence"] > 0.95


def test_a_column_from_the_next_row_is_caught_by_name_and_by_value():
    rng = np.random.default_rng(1)
    returns = rng.normal(0, 0.01, 500)
    direction = (returns > 0).astype(np.int64)  # the label: does the next bar go up?
    momentum = np.concatenate([[0.0], returns[:-1]])  # the bar just ended: fine
    X = np.column_stack([momentum, returns, returns])
    found = leakage.inspect(("momentum", "fwd_ret", "r"), X, direction, "class")
    assert set(found) == {"fwd_ret", "r"}
    assert "named like a value from a later row" in found["fwd_ret"]
    assert "looks computed from later rows" in found["r"]


def test_a_price_level_is_not_taken_for_the_future_but_is_said():
    rng = np.random.default_rng(2)
    price = 100 * np.cumprod(1 + rng.normal(0, 0.01, 500))
    next_price = np.concatenate([price[1:], [price[-1]]])
    found = leakage.inspect(("close",), price.reshape(-1, 1), next_price, "reg")
    assert "almost perfectly on its own" in found["close"]  # a level, not a leak
    assert "later rows" not in found["close"]


def test_scores_too_good_to_be_true_are_said():
    assert leakage.too_good("class", {"balanced_accuracy": 0.99}) is not None
    assert leakage.too_good("class", {"balanced_accuracy": 0.56}) is None
    assert leakage.too_good("reg", {"r2": 0.995}) is not None
    assert leakage.too_good("reg", {"r2": None}) is None
