"""scikit-learn model families: DecisionTree, RandomForest, ExtraTrees, GradientBoosting, Linear.

Models are stored with skops, which rebuilds objects without unpickling; only scikit-learn's
own types are trusted when loading, so a tampered file is refused instead of run.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import attrs
import numpy as np

from nember_core.plugin_api import (
    ModelFileRejected,
    Predictor,
    Tree,
    TreeEnsemble,
    hookimpl,
)

# family name -> (classifier, regressor, default hyperparameters)
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "DecisionTree": (
        "sklearn.tree.DecisionTreeClassifier",
        "sklearn.tree.DecisionTreeRegressor",
        {"random_state": 0},
    ),
    "RandomForest": (
        "sklearn.ensemble.RandomForestClassifier",
        "sklearn.ensemble.RandomForestRegressor",
        {"n_estimators": 100, "random_state": 0, "n_jobs": 1},
    ),
    "ExtraTrees": (
        "sklearn.ensemble.ExtraTreesClassifier",
        "sklearn.ensemble.ExtraTreesRegressor",
        {"n_estimators": 100, "random_state": 0, "n_jobs": 1},
    ),
    "GradientBoosting": (
        "sklearn.ensemble.HistGradientBoostingClassifier",
        "sklearn.ensemble.HistGradientBoostingRegressor",
        {"random_state": 0},
    ),
    "Linear": (
        "sklearn.linear_model.LogisticRegression",
        "sklearn.linear_model.LinearRegression",
        {},
    ),
}
EXTRA_DEFAULTS = {"sklearn.linear_model.LogisticRegression": {"max_iter": 1000}}


def _import(path: str):
    module, _, name = path.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


@attrs.frozen
class SklearnFamily:
    name: str
    classifier: str
    regressor: str
    defaults: dict[str, Any]
    library_version: str = attrs.field(factory=lambda: f"scikit-learn {version('scikit-learn')}")

    def fit(self, X: np.ndarray, y: np.ndarray, model_type: str, params: dict[str, Any]):
        path = self.classifier if model_type == "class" else self.regressor
        settings = {**self.defaults, **EXTRA_DEFAULTS.get(path, {}), **params}
        estimator = _import(path)(**settings)
        return estimator.fit(X, y)

    def dumps(self, model) -> bytes:
        import skops.io

        return skops.io.dumps(model)

    def loads(self, data: bytes, model_type: str):
        import skops.io

        try:
            untrusted = skops.io.get_untrusted_types(data=data)
        except Exception as exc:
            raise ModelFileRejected(f"not a skops model file: {exc}") from None
        foreign = [t for t in untrusted if not t.startswith("sklearn.")]
        if foreign:
            raise ModelFileRejected(f"model file refers to untrusted types: {', '.join(foreign)}")
        model = skops.io.loads(data, trusted=untrusted)
        expected = self.classifier if model_type == "class" else self.regressor
        if type(model).__name__ != expected.rpartition(".")[2]:
            raise ModelFileRejected(f"expected a {expected}, found {type(model).__name__}")
        return model

    def predictor(self, model, model_type: str):
        return fast_predictor(model)

    def predict(self, model, model_type: str, X: np.ndarray):
        return model.predict(X)


def fast_predictor(model) -> Predictor:
    """A single-row predictor equal to ``model.predict`` without its per-call validation.

    ``estimator.predict`` spends ~100 µs checking its input (and a forest dispatches its trees
    through joblib); the fitted arrays answer one row in a few µs. Checked equal to
    ``predict`` by the tests.
    """
    from sklearn.base import is_classifier
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    float32 = np.float32  # the trees' own dtype: predict converts to it too
    if isinstance(model, (DecisionTreeClassifier, DecisionTreeRegressor)):
        trees = [model.tree_]
    elif isinstance(
        model,
        (RandomForestClassifier, RandomForestRegressor, ExtraTreesClassifier, ExtraTreesRegressor),
    ):
        trees = [estimator.tree_ for estimator in model.estimators_]
    elif isinstance(model, LogisticRegression) and model.coef_.shape[0] == 1:
        coef, intercept, classes = model.coef_[0], float(model.intercept_[0]), model.classes_
        return Predictor(lambda row: classes[int(float(row[0] @ coef) + intercept > 0)])
    elif isinstance(model, LinearRegression) and np.ndim(model.coef_) == 1:
        coef, intercept = model.coef_, float(model.intercept_)
        return Predictor(lambda row: float(row[0] @ coef) + intercept)
    elif isinstance(model, (HistGradientBoostingClassifier, HistGradientBoostingRegressor)):
        fast = _hist_gradient_boosting(model)
        if fast is not None:
            return fast
        predict = model.predict
        return Predictor(lambda row: predict(row)[0])
    else:  # multinomial logistic regression: the library's path
        predict = model.predict
        return Predictor(lambda row: predict(row)[0])

    ensemble = TreeEnsemble(
        [Tree(t.children_left, t.children_right, t.feature, t.threshold, t.value[:, 0, :])
         for t in trees],
        less_equal=True, dtype=float32, single_row=_lone_tree(trees),
    )
    if len(trees) == 1:
        if is_classifier(model):
            classes = model.classes_
            return Predictor(lambda row: classes[ensemble(row[0]).argmax()], model.predict,
                             ensemble)
        return Predictor(lambda row: ensemble(row[0])[0], model.predict, ensemble)
    # A forest. One row: every tree at once (a TreeEnsemble), ~2x faster than a
    # loop over the trees' own predict. Many rows: each tree's own C loop over the rows wins,
    # ~9 µs a row instead of ~40.
    if is_classifier(model):
        classes, n_classes = model.classes_, model.n_classes_

        def class_rows(rows):
            x, total = rows.astype(float32), np.zeros((len(rows), n_classes))
            for tree in trees:
                total += tree.predict(x)[:, :n_classes]
            return classes[total.argmax(axis=1)]

        return Predictor(lambda row: classes[ensemble(row[0]).argmax()], class_rows, ensemble)
    count = len(trees)

    def value_rows(rows):
        x, total = rows.astype(float32), np.zeros(len(rows))
        for tree in trees:
            total += tree.predict(x)[:, 0]
        return total / count

    return Predictor(lambda row: ensemble(row[0])[0] / count, value_rows, ensemble)


def _lone_tree(trees):
    """A single tree's own C ``predict`` (3 µs) beats the NumPy walk over its depth."""
    if len(trees) != 1:
        return None
    predict = trees[0].predict
    float32 = np.float32
    return lambda row: predict(row.astype(float32).reshape(1, -1))[0]


def _hist_gradient_boosting(model):
    """HistGradientBoosting's trees as a TreeEnsemble: ~25 µs a row instead of ~800 µs for
    ``predict`` (which starts its thread pool on every call). ``None`` for categorical splits.
    """
    from sklearn.base import is_classifier

    outputs = len(model._predictors[0])  # trees per iteration: 1, or one per class
    trees = []
    for iteration in model._predictors:
        for output, predictor in enumerate(iteration):
            nodes = predictor.nodes
            if nodes["is_categorical"].any():
                return None
            leaf = nodes["is_leaf"].astype(bool)
            value = np.zeros((len(nodes), outputs))
            value[:, output] = np.where(leaf, nodes["value"], 0.0)
            trees.append(Tree(np.where(leaf, -1, nodes["left"].astype(np.int64)),
                              nodes["right"].astype(np.int64), nodes["feature_idx"],
                              nodes["num_threshold"], value))
    ensemble = TreeEnsemble(trees, less_equal=True, dtype=np.float64)
    # The baseline (the link of the prior), measured against the library on one row.
    probe = np.zeros((1, model.n_features_in_))
    base = model._raw_predict(probe)[0] - ensemble(probe[0])
    if not is_classifier(model):
        return Predictor(lambda row: float(ensemble(row[0])[0] + base[0]),
                         lambda rows: ensemble.batch(rows)[:, 0] + base[0], ensemble)
    classes = model.classes_
    if outputs == 1:  # binary: the positive class when its probability is over one half
        return Predictor(
            lambda row: classes[int(ensemble(row[0])[0] + base[0] > 0)],
            lambda rows: classes[(ensemble.batch(rows)[:, 0] + base[0] > 0).astype(np.intp)],
            ensemble,
        )
    return Predictor(lambda row: classes[int((ensemble(row[0]) + base).argmax())],
                     lambda rows: classes[(ensemble.batch(rows) + base).argmax(axis=1)],
                     ensemble)


@hookimpl
def nember_model_families():
    return [
        SklearnFamily(name, classifier, regressor, defaults)
        for name, (classifier, regressor, defaults) in FAMILIES.items()
    ]
