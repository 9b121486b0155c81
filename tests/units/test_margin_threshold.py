"""A binary model's one-row decision as one comparison of its margin (``margin_threshold``):
the same class as the library's sigmoid-over-one-half at every margin, rounding included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nember_core.plugin_api import margin_threshold
from tests.harness import needs_family


@pytest.mark.parametrize("cut", [0.0, 1e-9, -3.5, 5e-324, 1e300, -1e-300])
def test_the_threshold_of_a_plain_comparison_is_its_cut(cut):
    assert margin_threshold(lambda margin: margin > cut) == cut
    # ">=" says "negative" up to the double just below the cut
    assert margin_threshold(lambda margin: margin >= cut) == math.nextafter(cut, -math.inf)


def test_a_rule_that_is_not_a_binary_decision_is_refused():
    with pytest.raises(ValueError, match="negative at -inf and positive at inf"):
        margin_threshold(lambda margin: True)


def around(value: float, steps: int = 20_000, dtype=np.float64) -> np.ndarray:
    """The ``steps`` values of ``dtype`` either side of ``value``, and either side of zero
    (both signs)."""
    ints = {np.float64: np.int64, np.float32: np.int32}[dtype]
    centre = np.array([value], dtype=dtype).view(ints)[0]
    span = np.arange(-steps, steps, dtype=ints)
    near_zero = np.arange(steps, dtype=ints).view(dtype)
    return np.concatenate([(centre + span).view(dtype), near_zero, -near_zero]).astype(np.float64)


@needs_family("XGBoost")
def test_xgboost_one_row_decision_is_the_librarys_at_margins_near_its_threshold():
    import xgboost
    from nember_xgboost import POSITIVE_ABOVE, positive

    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 2))
    # Learning rate 0: every leaf is 0, so a row's margin is the base margin it is given.
    booster = xgboost.train({"objective": "binary:logistic", "eta": 0.0},
                            xgboost.DMatrix(x, label=(x[:, 0] > 0).astype(int)), 2)
    wanted = around(POSITIVE_ABOVE, 5000, np.float32)
    rows = np.zeros((len(wanted), 2), dtype=np.float32)
    margins = booster.inplace_predict(rows, predict_type="margin", base_margin=wanted)
    assert (np.asarray(margins, dtype=np.float64) == wanted).all()
    library = booster.inplace_predict(rows, base_margin=wanted) > 0.5
    assert library.any() and not library.all()  # the margins straddle the decision
    assert ((wanted > POSITIVE_ABOVE) == library).all()
    assert (positive(wanted) == library).all()


@needs_family("LightGBM")
@pytest.mark.parametrize("scale", [1.0, 0.3, 7.0])
def test_lightgbm_one_row_decision_is_its_sigmoid_over_one_half(scale):
    def positive(raw):  # as nember_lightgbm's many-rows path, which the family tests check
        return 1.0 / (1.0 + np.exp(-scale * raw)) > 0.5

    threshold = margin_threshold(lambda m: bool(positive(np.array([m]))[0]))
    raw = np.concatenate([around(threshold), around(0.0)])
    assert ((raw > threshold) == positive(raw)).all()
