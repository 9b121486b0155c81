"""The LightGBM model family, stored as LightGBM's own text model (no code on load)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import attrs
import numpy as np

from nember_core import hookimpl
from nember_core.errors import ModelFileRejected
from nember_core.family_tools import decode_output

DEFAULTS = {"n_estimators": 100, "random_state": 0, "n_jobs": 1, "verbosity": -1}



@attrs.frozen
class LightGBMFamily:
    name: str = "LightGBM"
    library_version: str = attrs.field(factory=lambda: f"lightgbm {version('lightgbm')}")
    file_suffix: str = ".txt"

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
        predict = model.predict
        return lambda row: decode_output(predict(row, num_threads=1), model_type)[0]

    def predict(self, model, model_type: str, X: np.ndarray):
        return decode_output(model.predict(X), model_type)


@hookimpl
def nember_model_families():
    try:
        version("lightgbm")
    except PackageNotFoundError:  # the optional extra is not installed
        return []
    return [LightGBMFamily()]
