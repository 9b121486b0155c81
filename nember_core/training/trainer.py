"""Training one model version from a dataset: windowing, a time-ordered hold-out, the fit.

Runs synchronously (in the CLI, or a worker process for the dashboard); knows nothing of the
server or of where the model is stored.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

from nember_core import rules
from nember_core.errors import InvalidData
from nember_core.plugin_api import ModelFamily
from nember_core.records import ModelKey, ModelMeta, artifact_digest, utcnow

from .dataset import Dataset, windowed

HOLDOUT_FRACTION = 0.2  # the newest fifth of the samples
MIN_SAMPLES_FOR_HOLDOUT = 10

Progress = Callable[[float, str], None]


@attrs.frozen
class TrainedModel:
    meta: ModelMeta  # version 0 until the model store assigns one
    artifact: bytes


def train(
    family: ModelFamily,
    data: Dataset,
    key: ModelKey,
    window: int = 1,
    params: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> TrainedModel:
    report = progress or (lambda fraction, stage: None)
    params = dict(params or {})
    rules.model_type(key.model_type)
    rules.window(window)

    report(0.05, "windowing")
    X = windowed(data.X, window)
    labels = data.y[window - 1 :]
    classes, y = _encode_target(labels, key.model_type, data.target)

    started = time.perf_counter()
    metrics = _holdout_metrics(family, X, y, key.model_type, params, classes, report)
    if data.skipped:
        metrics["warmup_rows_skipped"] = data.skipped
    report(0.6, "fitting on all samples")
    model = _fit(family, X, y, key.model_type, params)
    report(0.9, "serializing")
    artifact = family.dumps(model)
    elapsed = time.perf_counter() - started

    meta = ModelMeta(
        key=key,
        version=0,
        features=data.features,
        window=window,
        target=data.target,
        classes=classes,
        family_version=family.library_version,
        params=params,
        metrics=metrics,
        samples=len(y),
        trained_at=utcnow(),
        training_seconds=round(elapsed, 4),
        feature_ranges=tuple(zip(data.X.min(axis=0).tolist(), data.X.max(axis=0).tolist(),
                                 strict=True)),
        artifact_sha256=artifact_digest(artifact),
    )
    report(1.0, "trained")
    return TrainedModel(meta=meta, artifact=artifact)


def _encode_target(labels: list[Any], model_type: str, target: str):
    if model_type == "reg":
        bad = next((v for v in labels if isinstance(v, str)), None)
        if bad is not None:
            raise InvalidData(
                f"regression needs a numeric target, but {target!r} holds {bad!r}"
            )
        return None, np.asarray(labels, dtype=np.float64)
    classes = tuple(sorted(set(labels), key=lambda v: (isinstance(v, str), v)))
    if len(classes) < 2:
        raise InvalidData(f"classification needs at least two classes in {target!r}")
    if len(classes) > 1000:
        raise InvalidData(
            f"{target!r} has {len(classes)} distinct values: too many classes "
            "(did you mean --type reg?)"
        )
    index = {label: i for i, label in enumerate(classes)}
    return classes, np.fromiter((index[v] for v in labels), dtype=np.int64, count=len(labels))


def _fit(family: ModelFamily, X, y, model_type: str, params: dict[str, Any]):
    try:
        return family.fit(X, y, model_type, params)
    except (TypeError, ValueError) as exc:
        # Unknown or invalid hyperparameters surface here; one line, no traceback.
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidData(f"{family.name} could not be trained: {message}") from None


def _holdout_metrics(family, X, y, model_type, params, classes, report) -> dict[str, Any]:
    n = len(y)
    if n < MIN_SAMPLES_FOR_HOLDOUT:
        return {"holdout": None, "note": f"only {n} samples: no hold-out evaluation"}
    split = n - max(1, int(n * HOLDOUT_FRACTION))
    train_y, test_y = y[:split], y[split:]
    if model_type == "class" and len(np.unique(train_y)) < len(classes):
        return {"holdout": None, "note": "a class is missing before the hold-out; not evaluated"}
    report(0.15, "fitting on the training part")
    model = _fit(family, X[:split], train_y, model_type, params)
    report(0.45, "evaluating on the hold-out")
    predicted = np.asarray(family.predict(model, model_type, X[split:]))
    metrics: dict[str, Any] = {"holdout": len(test_y), "train": split}
    if model_type == "class":
        metrics["accuracy"] = round(float(np.mean(predicted == test_y)), 6)
    else:
        errors = predicted.astype(np.float64) - test_y
        metrics["mae"] = round(float(np.mean(np.abs(errors))), 6)
        metrics["rmse"] = round(float(math.sqrt(np.mean(errors**2))), 6)
        variance = float(np.var(test_y))
        metrics["r2"] = (
            round(1.0 - float(np.mean(errors**2)) / variance, 6) if variance > 0 else None
        )
    return metrics
