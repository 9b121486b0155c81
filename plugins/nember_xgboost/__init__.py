"""The XGBoost model family, stored in XGBoost's own UBJSON format (no code on load)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from typing import Any

import attrs
import numpy as np

from nember_core import hookimpl
from nember_core.errors import ModelFileRejected
from nember_core.family_tools import decode_output

DEFAULTS = {"n_estimators": 100, "random_state": 0, "n_jobs": 1}



@attrs.frozen
class XGBoostFamily:
    name: str = "XGBoost"
    library_version: str = attrs.field(factory=lambda: f"xgboost {_version()}")
    file_suffix: str = ".ubj"

    def fit(self, X: np.ndarray, y: np.ndarray, model_type: str, params: dict[str, Any]):
        import xgboost

        cls = xgboost.XGBClassifier if model_type == "class" else xgboost.XGBRegressor
        return cls(**{**DEFAULTS, **params}).fit(X, y).get_booster()

    def dumps(self, model) -> bytes:
        return bytes(model.save_raw(raw_format="ubj"))

    def loads(self, data: bytes, model_type: str):
        import xgboost

        booster = xgboost.Booster(params={"nthread": 1})
        try:
            booster.load_model(bytearray(data))
        except xgboost.core.XGBoostError as exc:
            raise ModelFileRejected(f"not an XGBoost model: {str(exc).splitlines()[0]}") from None
        return booster

    def predictor(self, model, model_type: str):
        inplace = model.inplace_predict
        if model_type == "reg":
            return lambda row: inplace(row)[0]
        return lambda row: decode_output(inplace(row), model_type)[0]

    def predict(self, model, model_type: str, X: np.ndarray):
        return decode_output(model.inplace_predict(X), model_type)


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
