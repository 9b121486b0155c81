"""The LightGBM model family, stored as LightGBM's own text model (no code on load)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import attrs
import numpy as np

from nember_core.plugin_api import (
    ModelFileRejected,
    Param,
    Predictor,
    Tree,
    TreeEnsemble,
    class_probabilities,
    decode_output,
    first_largest,
    hookimpl,
    margin_threshold,
    sigmoid,
    softmax,
)

DEFAULTS = {"n_estimators": 100, "random_state": 0, "n_jobs": 1, "verbosity": -1}
UNIT = Param((float,), 0.0, 1.0)
# An allow-list, not a deny-list: LightGBM takes hundreds of parameters, some of which read
# files of the server (*_filename) or start threads (num_threads).
PARAMETERS = {
    "n_estimators": Param((int,), 1, 2000),
    "num_leaves": Param((int,), 2, 4096),
    "max_depth": Param((int,), -1, 64),
    "learning_rate": Param((float,), 0.0, 10.0),
    "min_child_samples": Param((int,), 1, 1_000_000),
    "min_child_weight": Param((float,), 0.0),
    "min_split_gain": Param((float,), 0.0),
    "subsample": UNIT,
    "subsample_freq": Param((int,), 0, 1000),
    "colsample_bytree": UNIT,
    "reg_alpha": Param((float,), 0.0),
    "reg_lambda": Param((float,), 0.0),
    "max_bin": Param((int,), 2, 1024),
    "class_weight": Param((str,), choices=("balanced",), nullable=True),
    "boosting_type": Param((str,), choices=("gbdt", "dart", "rf")),
    "objective": Param((str,), choices=("regression", "regression_l1", "huber", "fair",
                                        "quantile", "mape", "binary", "multiclass",
                                        "multiclassova")),
    "random_state": Param((int,), 0, 2**31 - 1),
}



@attrs.frozen
class LightGBMFamily:
    name: str = "LightGBM"
    parameters: dict[str, Param] = attrs.field(factory=lambda: dict(PARAMETERS), repr=False)
    library_version: str = attrs.field(factory=lambda: f"lightgbm {version('lightgbm')}")

    def fit(self, X: np.ndarray, y: np.ndarray, model_type: str, params: dict[str, Any]):
        import lightgbm

        cls = lightgbm.LGBMClassifier if model_type == "class" else lightgbm.LGBMRegressor
        return cls(**{**DEFAULTS, **params}).fit(X, y).booster_

    def dumps(self, model) -> bytes:
        return model.model_to_string().encode("utf-8")

    def loads(self, data: bytes, model_type: str):
        import lightgbm

        try:
            return lightgbm.Booster(model_str=data.decode("utf-8"))
        except (lightgbm.basic.LightGBMError, UnicodeDecodeError) as exc:
            raise ModelFileRejected(f"not a LightGBM model: {str(exc).splitlines()[0]}") from None

    def predictor(self, model, model_type: str):
        fast = fast_predictor(model, model_type)
        if fast is not None:
            return fast
        predict = model.predict  # what the fast path doesn't cover
        if model_type == "reg":
            return Predictor(lambda row: decode_output(predict(row, num_threads=1), "reg")[0])
        return Predictor(lambda row: decode_output(predict(row, num_threads=1), model_type)[0],
                         proba=lambda row: class_probabilities(predict(row, num_threads=1)))

    def predict(self, model, model_type: str, X: np.ndarray):
        # One thread: on a busy server, OpenMP threads spinning on other cores cost more.
        return decode_output(model.predict(X, num_threads=1), model_type)

    def warm_up(self) -> None:
        import lightgbm  # noqa: F401


IDENTITY = {"regression", "regression_l1", "huber", "fair", "quantile", "mape"}
CLASSES = {"binary", "multiclass", "multiclassova"}


def fast_predictor(booster, model_type: str):
    """The booster's trees as a TreeEnsemble (~25 µs a row, and no OpenMP threads spinning
    on the other core), or ``None`` for what it doesn't cover (categorical splits, zero as
    missing, averaged output, other objectives). Checked against ``predict`` by the tests.
    """
    dump = booster.dump_model()
    objective, *settings = dump["objective"].split()
    if objective not in IDENTITY | CLASSES or dump.get("average_output"):
        return None
    outputs = int(dump["num_tree_per_iteration"])
    trees = []
    for info in dump["tree_info"]:
        tree = _flatten(info["tree_structure"], outputs, info["tree_index"] % outputs)
        if tree is None:
            return None
        trees.append(tree)
    ensemble = TreeEnsemble(trees, less_equal=True, dtype=np.float64)
    probe = np.zeros((1, booster.num_feature()))
    base = np.asarray(booster.predict(probe, raw_score=True)).reshape(-1) - ensemble(probe[0])

    base0, bases = float(base[0]), base.tolist()  # for ``decide``: floats in, floats out
    if model_type == "reg" or objective in IDENTITY:
        return Predictor(lambda row: float(ensemble(row[0])[0] + base[0]),
                         lambda rows: ensemble.batch(rows)[:, 0] + base[0], ensemble,
                         decide=lambda sums: sums[0] + base0)
    if outputs == 1:
        sigmoid_scale = _sigmoid_scale(settings)

        def positive(raw):  # as LightGBM: the probability, then over one half
            return (1.0 / (1.0 + np.exp(-sigmoid_scale * raw)) > 0.5).astype(np.intp)

        # One row: the raw score against the threshold where that sigmoid turns positive.
        threshold = margin_threshold(lambda m: bool(positive(np.array([m]))[0]))
        return Predictor(
            lambda row: int(ensemble(row[0])[0] + base0 > threshold),
            lambda rows: positive(ensemble.batch(rows)[:, 0] + base[0]), ensemble,
            lambda row: class_probabilities(
                sigmoid(sigmoid_scale * float(ensemble(row[0])[0] + base[0]))),
            decide=lambda sums: int(sums[0] + base0 > threshold))
    if objective == "multiclassova":  # a sigmoid per class, scaled to sum to 1
        scale = _sigmoid_scale(settings)
        return Predictor(
            lambda row: int((ensemble(row[0]) + base).argmax()),
            lambda rows: (ensemble.batch(rows) + base).argmax(axis=1), ensemble,
            lambda row: class_probabilities(
                [sigmoid(scale * float(m)) for m in ensemble(row[0]) + base]),
            decide=lambda sums: first_largest(sums, bases))
    return Predictor(lambda row: int((ensemble(row[0]) + base).argmax()),
                     lambda rows: (ensemble.batch(rows) + base).argmax(axis=1), ensemble,
                     lambda row: softmax(ensemble(row[0]) + base),
                     decide=lambda sums: first_largest(sums, bases))


def _sigmoid_scale(settings: list[str]) -> float:
    """The ``sigmoid:`` setting of a binary or one-vs-rest objective (1 by default)."""
    return float(dict(s.split(":") for s in settings if ":" in s).get("sigmoid", 1.0))


def _flatten(root: dict, outputs: int, output: int) -> Tree | None:
    """A dumped tree (nested dicts) as flat arrays, root first; None if a split isn't a
    plain numeric ``<=`` (categorical, or zero treated as missing)."""
    left, right, feature, threshold, values = [], [], [], [], []
    pending = [(root, -1, False)]  # (node, parent index, is the parent's left child)
    while pending:
        node, parent, is_left = pending.pop()
        index = len(left)
        if parent >= 0:
            (left if is_left else right)[parent] = index
        if "leaf_value" in node:
            left.append(-1), right.append(-1), feature.append(0), threshold.append(0.0)
            values.append(node["leaf_value"])
            continue
        if node["decision_type"] != "<=" or node["missing_type"] == "Zero":
            return None
        left.append(-1), right.append(-1)
        feature.append(node["split_feature"]), threshold.append(node["threshold"])
        values.append(0.0)
        pending.append((node["right_child"], index, False))
        pending.append((node["left_child"], index, True))
    value = np.zeros((len(left), outputs))
    value[:, output] = values
    return Tree(np.asarray(left), np.asarray(right), np.asarray(feature), np.asarray(threshold),
                value)


@hookimpl
def nember_model_families():
    try:
        version("lightgbm")
    except PackageNotFoundError:  # the optional extra is not installed
        return []
    return [LightGBMFamily()]
