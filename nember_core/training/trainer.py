"""Training one model version from a dataset: leakage checks, windowing, a walk-forward
evaluation (``evaluation``), the fit on all samples.

Runs synchronously (in the CLI, or a worker process for the dashboard); knows nothing of the
server or of where the model is stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

from nember_core import rules
from nember_core.errors import InvalidData
from nember_core.plugin_api import ModelFamily
from nember_core.records import ModelKey, ModelMeta, artifact_digest, utcnow

from . import leakage
from .dataset import Dataset, windowed
from .evaluation import Settings, walk_forward

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
    settings: Settings | None = None,
) -> TrainedModel:
    report = progress or (lambda fraction, stage: None)
    params = dict(params or {})
    settings = settings or Settings()
    model_type = key.model_type
    rules.model_type(model_type)
    rules.window(window)

    report(0.02, "checking the features")
    classes, y_rows = _encode_target(data.y, model_type, data.target)
    data, warnings = _without_leaks(data, y_rows, model_type)
    report(0.05, "windowing")
    X = windowed(data.X, window)
    y = y_rows[window - 1 :]
    returns = None if data.returns is None else data.returns[window - 1 :]

    started = time.perf_counter()
    evaluation = walk_forward(family, lambda X_, y_: _fit(family, X_, y_, model_type, params),
                              X, y, model_type, classes, window, settings, returns, report)
    metrics = dict(evaluation.get("metrics") or {})
    if not metrics:
        metrics["note"] = "; ".join(evaluation["notes"]) or "not evaluated"
    too_good = leakage.too_good(model_type, metrics)
    if too_good:
        warnings.append(too_good)
    evaluation["warnings"] = warnings
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
        evaluation=evaluation,
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


def _without_leaks(data: Dataset, y_rows: np.ndarray,
                   model_type: str) -> tuple[Dataset, list[str]]:
    """Default features that look computed from later rows are left out; named ones stay.
    Either way, each is a warning."""
    suspects = leakage.inspect(data.features, data.X, y_rows, model_type)
    if not data.defaulted or not suspects:
        return data, list(suspects.values())
    keep = [i for i, name in enumerate(data.features) if name not in suspects]
    if not keep:
        raise InvalidData(
            "every numeric column looks computed from later rows ("
            + "; ".join(suspects.values()) + "): name the features to use")
    warnings = [f"left out of the default features: {why}" for why in suspects.values()]
    return attrs.evolve(data, features=tuple(data.features[i] for i in keep),
                        X=np.ascontiguousarray(data.X[:, keep])), warnings
