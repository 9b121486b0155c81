"""Small helpers for model-family plugins."""

from __future__ import annotations

import numpy as np


def decode_output(raw: np.ndarray, model_type: str) -> np.ndarray:
    """Turn a gradient-boosting booster's raw output into predictions.

    For ``class``: probabilities to class indices, as the libraries' sklearn wrappers do (one
    column: the positive class's probability; several: one per class). ``reg`` passes through.
    """
    if model_type == "reg":
        return raw
    if raw.ndim == 2:
        return raw.argmax(axis=1)
    return (raw > 0.5).astype(np.int64)


def with_rows(single, rows, ensemble=None):
    """Attach the many-rows version to a single-row predictor (see ModelFamily.predictor),
    and the TreeEnsemble it evaluates, which the model cache may compile to native code."""
    single.rows = rows
    if ensemble is not None:
        single.ensemble = ensemble
    return single
