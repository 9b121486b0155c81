"""The XGBoost model family, stored in XGBoost's own UBJSON format (no code on load)."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
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

DEFAULTS = {"n_estimators": 100, "random_state": 0, "n_jobs": 1}
UNIT = Param((float,), 0.0, 1.0)
# What users may set: bounded, and never n_jobs or nthread, which escape the one-core worker.
PARAMETERS = {
    "n_estimators": Param((int,), 1, 2000),
    "max_depth": Param((int,), 0, 32),
    "max_leaves": Param((int,), 0, 65536),
    "learning_rate": Param((float,), 0.0, 10.0),
    "min_child_weight": Param((float,), 0.0),
    "gamma": Param((float,), 0.0),
    "max_delta_step": Param((float,), 0.0),
    "subsample": UNIT,
    "colsample_bytree": UNIT,
    "colsample_bylevel": UNIT,
    "colsample_bynode": UNIT,
    "reg_alpha": Param((float,), 0.0),
    "reg_lambda": Param((float,), 0.0),
    "scale_pos_weight": Param((float,), 0.0),
    "base_score": Param((float,), nullable=True),
    "max_bin": Param((int,), 2, 1024),
    "tree_method": Param((str,), choices=("hist", "approx", "exact")),
    "grow_policy": Param((str,), choices=("depthwise", "lossguide")),
    "booster": Param((str,), choices=("gbtree", "dart", "gblinear")),
    "objective": Param((str,), choices=("reg:squarederror", "reg:absoluteerror",
                                        "reg:pseudohubererror", "reg:logistic",
                                        "binary:logistic", "multi:softprob", "multi:softmax")),
    "random_state": Param((int,), 0, 2**31 - 1),
}



@attrs.frozen
class XGBoostFamily:
    name: str = "XGBoost"
    parameters: dict[str, Param] = attrs.field(factory=lambda: dict(PARAMETERS), repr=False)
    library_version: str = attrs.field(factory=lambda: f"xgboost {_version()}")

    def fit(self, X: np.ndarray, y: np.ndarray, model_type: str, params: dict[str, Any]):
        import xgboost

        cls = xgboost.XGBClassifier if model_type == "class" else xgboost.XGBRegressor
        return cls(**{**DEFAULTS, **params}).fit(X, y).get_booster()

    def dumps(self, model) -> bytes:
        return bytes(model.save_raw(raw_format="ubj"))

    def loads(self, data: bytes, model_type: str):
        import xgboost

        # XGBoost aborts the whole process on some inputs (empty bytes): only its JSON and
        # UBJSON formats, both one object, reach it.
        if not data.lstrip()[:1] == b"{":
            raise ModelFileRejected("not an XGBoost model (JSON or UBJSON)")
        booster = xgboost.Booster(params={"nthread": 1})
        try:
            booster.load_model(bytearray(data))
        except xgboost.core.XGBoostError as exc:
            raise ModelFileRejected(f"not an XGBoost model: {str(exc).splitlines()[0]}") from None
        return booster

    def predictor(self, model, model_type: str):
        fast = fast_predictor(model, model_type)
        if fast is not None:
            return fast
        inplace = model.inplace_predict  # objectives the fast path doesn't know
        if model_type == "reg":
            return Predictor(lambda row: inplace(row)[0])
        return Predictor(lambda row: decode_output(inplace(row), model_type)[0],
                         proba=lambda row: _margin_probabilities(
                             inplace(row, predict_type="margin")))

    def predict(self, model, model_type: str, X: np.ndarray):
        return decode_output(model.inplace_predict(X), model_type)

    def warm_up(self) -> None:
        import xgboost  # noqa: F401


IDENTITY = {"reg:squarederror", "reg:absoluteerror", "reg:pseudohubererror"}
CLASSES = {"binary:logistic", "multi:softprob", "multi:softmax"}


def fast_predictor(booster, model_type: str):
    """The booster's trees as a TreeEnsemble (~10 µs a row instead of ~170 µs for
    ``inplace_predict``), or ``None`` for what it doesn't cover (dart, linear, categorical
    splits, other objectives). Checked against ``inplace_predict`` by the tests.
    """
    learner = json.loads(bytes(booster.save_raw(raw_format="json")))["learner"]
    booster_kind = learner["gradient_booster"]
    objective = learner["objective"]["name"]
    if booster_kind.get("name") != "gbtree" or objective not in (IDENTITY | CLASSES):
        return None
    forest = booster_kind["model"]
    outputs = max(1, int(learner["learner_model_param"]["num_class"]))
    trees = []
    for tree, group in zip(forest["trees"], forest["tree_info"], strict=True):
        if any(tree["split_type"]) or tree["categories_nodes"]:
            return None
        left = np.asarray(tree["left_children"], dtype=np.int64)
        conditions = np.asarray(tree["split_conditions"], dtype=np.float32)
        value = np.zeros((len(left), outputs))
        value[:, group] = np.where(left < 0, conditions, 0.0)  # a leaf keeps its value there
        trees.append(Tree(left, np.asarray(tree["right_children"]),
                          np.asarray(tree["split_indices"]), conditions, value))
    ensemble = TreeEnsemble(trees, less_equal=False, dtype=np.float32)
    # The base margin (base_score through the objective's link), measured, not re-derived.
    probe = np.zeros((1, booster.num_features()), dtype=np.float32)
    library = np.asarray(booster.inplace_predict(probe, predict_type="margin")).reshape(-1)
    base = library - ensemble(probe[0])

    base0, bases = float(base[0]), base.tolist()  # for ``decide``: floats in, floats out
    if model_type == "reg" or objective in IDENTITY:
        return Predictor(lambda row: float(ensemble(row[0])[0] + base[0]),
                         lambda rows: ensemble.batch(rows)[:, 0] + base[0], ensemble,
                         decide=lambda sums: sums[0] + base0)
    if outputs == 1:
        return Predictor(
            lambda row: int(ensemble(row[0])[0] + base0 > POSITIVE_ABOVE),
            lambda rows: positive(ensemble.batch(rows)[:, 0] + base0), ensemble,
            lambda row: class_probabilities(sigmoid(float(ensemble(row[0])[0] + base[0]))),
            decide=lambda sums: int(sums[0] + base0 > POSITIVE_ABOVE))
    return Predictor(lambda row: int((ensemble(row[0]) + base).argmax()),
                     lambda rows: (ensemble.batch(rows) + base).argmax(axis=1), ensemble,
                     lambda row: softmax(ensemble(row[0]) + base),
                     decide=lambda sums: first_largest(sums, bases))


def positive(margins: np.ndarray) -> np.ndarray:
    """Binary classes from margins, as XGBoost decides: its float32 sigmoid over one half.

    XGBoost calls the C library's ``expf``, correctly rounded; NumPy's float32 ``exp`` is not
    (it tips margins near 1e-7 the other way), so the exponential is taken in float64 and
    rounded once to float32.
    """
    margins = margins.astype(np.float32)
    exponentials = np.exp(-margins.astype(np.float64)).astype(np.float32)
    return (_ONE / (exponentials + _ONE) > _HALF).astype(np.intp)


_ONE, _HALF = np.float32(1), np.float32(0.5)
# The same decision for one margin as a comparison (1.2e-7: float32 rounding puts the smallest
# positive margins at exactly one half).
POSITIVE_ABOVE = margin_threshold(lambda margin: bool(positive(np.array([margin]))[0]))


def _margin_probabilities(margins) -> np.ndarray:
    """One row's margins (one for a binary model, one per class otherwise) as probabilities."""
    margins = np.asarray(margins, dtype=np.float64).reshape(-1)
    if margins.size == 1:
        return class_probabilities(sigmoid(float(margins[0])))
    return softmax(margins)


def _version() -> str:
    """The installed distribution's version: xgboost-cpu (the extra) or xgboost (GPU build)."""
    for distribution in ("xgboost-cpu", "xgboost"):
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return "unknown"


@hookimpl
def nember_model_families():
    if find_spec("xgboost") is None:  # the optional extra is not installed
        return []
    return [XGBoostFamily()]
