"""Each family's single-row predictor (the hot path) equals the library's own ``predict``.

Classes exactly; values within float tolerance (trees summed in another order). Over
thousands of rows, binary and multi-class, shallow and deep, and the fallbacks.
"""

from __future__ import annotations

import numpy as np
import pytest

from nember_core.plugin_api import Tree, TreeEnsemble
from nember_core.plugins import collect_families, plugin_manager
from tests.harness import needs_family
from tests.synthetic import dataset

FAMILIES = collect_families(plugin_manager())
X, TARGETS, ROWS = dataset(42)

PARAMS = {
    "XGBoost": [{}, {"max_depth": 10, "n_estimators": 200},
                {"objective": "reg:logistic"}],  # the last one: the library fallback
    "LightGBM": [{}, {"num_leaves": 63}],
    "GradientBoosting": [{}, {"max_depth": 3}],
    "RandomForest": [{}, {"max_depth": 4, "n_estimators": 30}],
    "ExtraTrees": [{}],
    "DecisionTree": [{}],
    "Linear": [{}],
}


def cases():
    for family, settings in PARAMS.items():
        for params in settings:
            for target in TARGETS:
                if params.get("objective") == "reg:logistic" and target != "reg":
                    continue
                yield pytest.param(family, target, params, id=f"{family}-{target}-{params}",
                                   marks=needs_family(family))


@pytest.mark.parametrize("family_name,target,params", list(cases()))
def test_predictor_equals_the_library(family_name, target, params):
    family = FAMILIES[family_name]
    model_type, y = TARGETS[target]
    if params.get("objective") == "reg:logistic":
        y = (y > np.median(y)).astype(np.float64)
    model = family.loads(family.dumps(family.fit(X, y, model_type, params)), model_type)
    expected = np.asarray(family.predict(model, model_type, ROWS))
    predict = family.predictor(model, model_type)
    got = np.array([predict.one(ROWS[i : i + 1]) for i in range(len(ROWS))])
    batches = []
    if predict.many is not None:  # the batch path serves concurrent requests: check it too
        batches = [np.asarray(predict.many(ROWS)), np.asarray(predict.many(ROWS[:3]))]
    for answer in (got, *batches):
        want = expected[: len(answer)]
        if model_type == "class":
            assert (answer == want).all(), f"{(answer != want).sum()} rows differ"
        else:
            np.testing.assert_allclose(answer, want, rtol=1e-5, atol=1e-6)
    # What compiled trees answer through: the very same answers from the trees' sums.
    assert (predict.decide is None) == (predict.ensemble is None)
    if predict.decide is not None:
        decided = [predict.decide(predict.ensemble.sums(row.tolist())) for row in ROWS]
        assert decided == got.tolist()


def test_tree_ensemble_walks_both_comparisons():
    # x0 <= 0.5 ? (x1 < 2 ? 10 : 20) : 30, as one tree; and a stump adding 1 or 2.
    tree = Tree(left=np.array([1, 3, -1, -1, -1]), right=np.array([2, 4, -1, -1, -1]),
                feature=np.array([0, 1, -1, -1, -1]), threshold=np.array([0.5, 2, 0, 0, 0]),
                value=np.array([[0], [0], [30], [10], [20]], dtype=float))
    stump = Tree(left=np.array([1, -1, -1]), right=np.array([2, -1, -1]),
                 feature=np.array([1, -1, -1]), threshold=np.array([2.0, 0, 0]),
                 value=np.array([[0], [1], [2]], dtype=float))
    le = TreeEnsemble([tree, stump], less_equal=True)
    lt = TreeEnsemble([tree, stump], less_equal=False)
    assert le(np.array([0.5, 2.0]))[0] == 10 + 1  # on a threshold: <= goes left
    assert lt(np.array([0.5, 2.0]))[0] == 30 + 2  # and < goes right
    assert le(np.array([0.0, 1.0]))[0] == 10 + 1
    assert le(np.array([9.0, 9.0]))[0] == 30 + 2


def test_a_tree_with_a_cycle_is_refused():
    loop = Tree(left=np.array([1, 0]), right=np.array([1, 0]), feature=np.array([0, 0]),
                threshold=np.array([0.0, 0.0]), value=np.zeros((2, 1)))
    with pytest.raises(ValueError):
        TreeEnsemble([loop], less_equal=True)


def library_probabilities(family_name: str, model, rows: np.ndarray) -> np.ndarray:
    """Each row's class probabilities as the library itself gives them."""
    if family_name == "XGBoost":
        raw = np.asarray(model.inplace_predict(rows))
    elif family_name == "LightGBM":
        raw = np.asarray(model.predict(rows, num_threads=1))
    else:
        return model.predict_proba(rows)
    return np.column_stack([1 - raw, raw]) if raw.ndim == 1 else raw


@pytest.mark.parametrize("family_name,target,params",
                         [case for case in cases() if TARGETS[case.values[1]][0] == "class"])
def test_probabilities_equal_the_librarys_and_agree_with_the_prediction(family_name, target,
                                                                        params):
    family = FAMILIES[family_name]
    model_type, y = TARGETS[target]
    model = family.loads(family.dumps(family.fit(X, y, model_type, params)), model_type)
    predict = family.predictor(model, model_type)
    assert predict.proba is not None, f"{family_name} gives no probabilities"
    rows = ROWS[:500]
    got = np.array([predict.proba(rows[i : i + 1]) for i in range(len(rows))])
    np.testing.assert_allclose(got, library_probabilities(family_name, model, rows),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0)
    labels = np.array([predict.one(rows[i : i + 1]) for i in range(len(rows))])
    # The most probable class is the prediction (ties within float noise aside).
    margin = np.sort(got, axis=1)
    clear = margin[:, -1] - margin[:, -2] > 1e-6
    assert (got.argmax(axis=1)[clear] == labels[clear]).all()
