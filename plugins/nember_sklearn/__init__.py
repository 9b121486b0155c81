"""scikit-learn model families: DecisionTree, RandomForest, ExtraTrees, GradientBoosting, Linear.

Models are stored with skops, which rebuilds objects without unpickling; only scikit-learn's
own types are trusted when loading, so a tampered file is refused instead of run.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import attrs
import numpy as np

from nember_core import hookimpl
from nember_core.errors import ModelFileRejected

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
    file_suffix: str = ".skops"

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
        predict = model.predict
        return lambda row: predict(row)[0]

    def predict(self, model, model_type: str, X: np.ndarray):
        return model.predict(X)


@hookimpl
def nember_model_families():
    return [SklearnFamily(name, clf, reg, defaults) for name, (clf, reg, defaults) in FAMILIES.items()]
