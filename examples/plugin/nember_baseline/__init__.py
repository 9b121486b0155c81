"""An example third-party model family: ``Baseline``.

It predicts the most frequent class (``class``) or the mean target (``reg``) seen in training,
whatever the input: the yardstick a real model must beat. Stored as JSON, so loading it can
never run code. Install with ``pip install ./examples/plugin``; ``nember families`` then lists it.
"""

from __future__ import annotations

import json
from collections import Counter

from nember_core.plugin_api import ModelFileRejected, Predictor, hookimpl


class BaselineFamily:
    name = "Baseline"
    library_version = "nember-baseline 0.1.0"
    parameters = {}  # it takes no hyperparameters

    def fit(self, X, y, model_type, params):
        if model_type == "class":
            return {"value": int(Counter(y.tolist()).most_common(1)[0][0])}
        return {"value": float(y.mean())}

    def dumps(self, model) -> bytes:
        return json.dumps(model).encode()

    def loads(self, data: bytes, model_type: str):
        try:
            model = json.loads(data)
            float(model["value"])
        except (ValueError, KeyError, TypeError):
            raise ModelFileRejected("not a Baseline model") from None
        return model

    def predictor(self, model, model_type):
        value = model["value"]
        return Predictor(one=lambda row: value)

    def predict(self, model, model_type, X):
        return [model["value"]] * len(X)


@hookimpl
def nember_model_families():
    return [BaselineFamily()]
