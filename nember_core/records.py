"""The data that moves between the core and its plugins, as typed attrs classes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, final

import attrs


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _names(items: Iterable[str]) -> tuple[str, ...]:
    """``ModelMeta.features``' converter: any iterable of names, kept as a tuple (a typed
    function, so that the checker knows what the field's ``__init__`` argument takes)."""
    return tuple(items)


@attrs.frozen
class Account:
    id: str
    email: str
    created_at: datetime


@attrs.frozen
class ApiKey:
    """An API key as stored: never the key itself, only its id, name and visible prefix."""

    id: str
    account_id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None
    scope: str = "predict"  # predict, read or manage (nember_core.rules.SCOPES)

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@attrs.frozen
class NewApiKey:
    """A key just created: ``secret`` is the full key, shown to its owner this once."""

    key: ApiKey
    secret: str = attrs.field(repr=False)


@final  # never subclassed: the serving path tells it apart with ``type(x) is ModelKey``
@attrs.frozen
class ModelKey:
    """What a prediction request names: whose model, for which strategy, family and type.

    The same three names everywhere inside; at the edges they keep the spellings their
    contracts fix: ``strat_name``, ``model_name``, ``model_type`` on the websocket;
    ``--strat``, ``--model``, ``--type`` on the command line and ``strat``, ``model``,
    ``type`` in the REST API.
    """

    account_id: str
    strat: str
    family: str
    model_type: str

    @property
    def id(self) -> str:
        """A stable, opaque id for the model (all its versions), for URLs."""
        text = "\0".join((self.account_id, self.strat, self.family, self.model_type))
        return "mdl_" + hashlib.sha256(text.encode()).hexdigest()[:16]


@attrs.frozen
class ModelMeta:
    """Everything known about one trained model version, stored beside its file."""

    key: ModelKey
    version: int
    features: tuple[str, ...] = attrs.field(converter=_names)
    window: int
    target: str
    classes: tuple[Any, ...] | None  # label of each class index, as in the training data
    family_version: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    samples: int
    trained_at: datetime
    training_seconds: float
    # SHA-256 of the model file, checked before a server decodes it: a damaged file is refused
    # instead of reaching a library that may crash on it. None for models stored before it.
    artifact_sha256: str | None = None
    # The smallest and largest value of each feature in the training data, in ``features``
    # order: what "in distribution" means for a request (PROTOCOL §7). None for models
    # trained before it was kept.
    feature_ranges: tuple[tuple[float, float], ...] | None = attrs.field(
        default=None, converter=lambda r: None if r is None else tuple(map(tuple, r)))
    # How it would have done on data it never saw (training/evaluation.py): folds, scores,
    # calibration, backtest, warnings. None for models trained before it was kept.
    evaluation: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        """The id of this version: the model's id and the version number."""
        return f"{self.key.id}-v{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {
            "account_id": self.key.account_id,
            "strat": self.key.strat,
            "family": self.key.family,
            "model_type": self.key.model_type,
            "version": self.version,
            "features": list(self.features),
            "window": self.window,
            "target": self.target,
            "classes": None if self.classes is None else list(self.classes),
            "family_version": self.family_version,
            "params": self.params,
            "metrics": self.metrics,
            "samples": self.samples,
            "trained_at": self.trained_at.isoformat(),
            "training_seconds": self.training_seconds,
            "artifact_sha256": self.artifact_sha256,
            "feature_ranges": (None if self.feature_ranges is None
                               else [list(r) for r in self.feature_ranges]),
            "evaluation": self.evaluation,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelMeta:
        classes = data["classes"]
        return cls(
            key=ModelKey(data["account_id"], data["strat"], data["family"], data["model_type"]),
            version=int(data["version"]),
            features=tuple(data["features"]),
            window=int(data["window"]),
            target=data["target"],
            classes=None if classes is None else tuple(classes),
            family_version=data["family_version"],
            params=dict(data["params"]),
            metrics=dict(data["metrics"]),
            samples=int(data["samples"]),
            trained_at=datetime.fromisoformat(data["trained_at"]),
            training_seconds=float(data["training_seconds"]),
            artifact_sha256=data.get("artifact_sha256"),
            feature_ranges=data.get("feature_ranges"),
            evaluation=data.get("evaluation"),
        )


def artifact_digest(artifact: bytes) -> str:
    return hashlib.sha256(artifact).hexdigest()


@attrs.frozen
class Charge:
    connection_id: str
    account_id: str
    key_id: str
    amount: Decimal
    currency: str
    charged_at: datetime


@attrs.define(eq=False)
class LiveConnection:
    """An authenticated websocket as registries list it (no socket: closing goes through the
    callback the registry got with it). This node's own connections count live; another
    node's are as of that node's last report."""

    id: str
    account_id: str
    key_id: str
    key_name: str
    remote: str
    node: str
    opened_at: datetime
    predictions: int = 0
    errors: int = 0
    last_request_at: float | None = None  # Unix time

    def usage(self) -> ConnectionUsage:
        return ConnectionUsage(
            connection_id=self.id,
            account_id=self.account_id,
            key_id=self.key_id,
            remote=self.remote,
            opened_at=self.opened_at,
            predictions=self.predictions,
            errors=self.errors,
        )


@attrs.define
class TrainingJob:
    """A training job started through the REST API, as every server process reports it."""

    id: str
    account_id: str
    key: ModelKey
    created_at: datetime
    state: str = "queued"
    progress: float = 0.0
    stage: str = "queued"
    error: str | None = None
    model_id: str | None = None
    version: int | None = None
    finished_at: datetime | None = None


@attrs.define
class ConnectionUsage:
    """One connection's life, as billing records it."""

    connection_id: str
    account_id: str
    key_id: str
    remote: str
    opened_at: datetime
    closed_at: datetime | None = None
    close_code: int | None = None
    close_reason: str | None = None
    predictions: int = 0
    errors: int = 0
