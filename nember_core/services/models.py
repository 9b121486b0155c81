"""Models: training (here, or as a background job), importing, versions, deleting, families."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import structlog

from nember_core import rules
from nember_core.errors import InvalidData, NemberError, NotFound
from nember_core.plugin_api import ModelFamily
from nember_core.records import ModelKey, ModelMeta, TrainingJob, artifact_digest, utcnow
from nember_core.stores import Stores
from nember_core.training import importing
from nember_core.training.dataset import check_header, read_csv, shown_as
from nember_core.training.evaluation import Settings
from nember_core.training.trainer import Progress, train

if TYPE_CHECKING:
    from nember_core.training.jobs import TrainingJobs

log = structlog.get_logger("nember.models")


@attrs.frozen
class TrainingRequest:
    """What to train: the same fields from the CLI, the REST API and the demo."""

    strat: str
    family: str
    model_type: str
    data: Path  # a CSV in time order
    target: str
    window: int = 1
    features: list[str] | None = None  # default: every numeric column but the target
    params: dict[str, Any] = attrs.Factory(dict)
    skip_warmup: bool = False  # drop leading rows with an empty feature or target
    # The walk-forward evaluation (training/evaluation.py): folds, the label's horizon in
    # rows (the purge gap), and for a backtest each row's next-bar return column.
    folds: int = 5
    horizon: int = 1
    returns: str | None = None
    bars_per_year: float = 252.0

    def evaluation(self) -> Settings:
        return Settings(self.folds, self.horizon, float(self.bars_per_year))
    data_label: str | None = None  # how errors name the CSV (default: its path)


@attrs.frozen
class ImportRequest:
    """A model trained elsewhere, to store and serve like a trained one (PROTOCOL §3): the
    same fields from the CLI, the REST API and the dashboard."""

    strat: str
    family: str
    model_type: str
    artifact: bytes = attrs.field(repr=False)  # the model file, as its library wrote it
    # The model's input row: ``window`` data points oldest first, each point's ``features``
    # in this order (the layout training uses).
    features: list[str]
    window: int = 1
    classes: list[Any] | None = None  # class models: the label of each class index
    target: str = "imported"  # what the model predicts, for listings
    label: str = "the model file"  # how errors name the file


@attrs.frozen
class ModelVersion:
    meta: ModelMeta
    latest: bool


class Models:
    def __init__(self, stores: Stores, families: dict[str, ModelFamily],
                 jobs: TrainingJobs | None = None):
        self._stores = stores
        self._store = stores.model_store
        self.families = families
        self._jobs = jobs  # only a server runs background jobs

    def family(self, name: str) -> ModelFamily:
        try:
            return self.families[name]
        except KeyError:
            known = ", ".join(sorted(self.families))
            raise InvalidData(f"no installed model family {name!r} (installed: {known})") from None

    def _key(self, account_id: str, request: TrainingRequest) -> ModelKey:
        """Every rule a training request must meet, but the CSV's."""
        strat = rules.name(request.strat, "a strategy name")
        family = self.family(request.family)
        if not getattr(family, "trainable", True):
            raise InvalidData(f"{family.name} models are not trained by Nember: import one "
                              "trained elsewhere with `nember models import` (or POST "
                              "/api/models/import)")
        model_type = rules.model_type(request.model_type)
        rules.window(request.window)
        if request.features is not None and not request.features:
            raise InvalidData("name at least one feature column")
        if not isinstance(request.params, dict):
            raise InvalidData("the hyperparameters must be a mapping of names to values")
        rules.hyperparameters(family.name, request.params, family.parameters)
        rules.evaluation(request.folds, request.horizon, request.bars_per_year)
        return ModelKey(account_id, strat, family.name, model_type)

    async def train(self, account_id: str, request: TrainingRequest,
                    progress: Progress | None = None) -> ModelMeta:
        """Train in this process (a thread) and store the new version."""
        key = self._key(account_id, request)
        with shown_as(request.data, request.data_label):
            dataset = await asyncio.to_thread(read_csv, request.data, request.target,
                                              request.features, request.skip_warmup,
                                              request.returns)
        trained = await asyncio.to_thread(train, self.families[key.family], dataset, key,
                                          request.window, request.params, progress,
                                          request.evaluation())
        meta = await self._store.save(trained.meta, trained.artifact)
        await self._stores.announce_model(meta.key, meta.version)
        return meta

    async def submit(self, account_id: str, request: TrainingRequest,
                     cleanup: Path | None = None) -> TrainingJob:
        """Queue a job on the board, for whichever server process has a free training slot;
        ``cleanup`` (an upload) is deleted once its bytes are on the board (or refused).

        Only the CSV's header is read here (a wrong column is an error now, not a failed
        job); the job's process reads the rest, so a large upload is never parsed by the
        server: its bytes go to the board as they are, with the spec."""
        if self._jobs is None:
            raise NemberError("training jobs run only inside a server")
        try:
            key = self._key(account_id, request)
            with shown_as(request.data, request.data_label):
                await asyncio.to_thread(check_header, request.data, request.target,
                                        request.features, request.returns)
            data = await asyncio.to_thread(request.data.read_bytes)
        finally:
            if cleanup is not None:
                cleanup.unlink(missing_ok=True)
        spec = {"target": request.target, "window": request.window,
                "features": request.features, "params": request.params,
                "skip_warmup": request.skip_warmup, "data_label": request.data_label,
                "returns": request.returns,
                "evaluation": attrs.asdict(request.evaluation())}
        return await self._jobs.submit(spec, key, data)

    async def import_model(self, account_id: str, request: ImportRequest) -> ModelMeta:
        """Check a model file made elsewhere (``training/importing.py``) and store it as the
        next version."""
        key = self._import_key(account_id, request)
        features = tuple(importing.feature_names(request.features))
        classes = importing.checked_classes(request.classes, key.model_type)
        target = rules.name(request.target, "the target's name")
        importing.check_file(request.artifact, request.label)
        family = self.families[key.family]
        classes = await importing.inspect_apart(family, key.model_type, request.artifact,
                                                len(features), request.window, classes,
                                                request.label)
        meta = ModelMeta(
            key=key, version=0, features=features, window=request.window, target=target,
            classes=classes, family_version=family.library_version, params={},
            metrics={"note": "imported: not evaluated by Nember"}, samples=0,
            trained_at=utcnow(), training_seconds=0.0,
            artifact_sha256=artifact_digest(request.artifact))
        meta = await self._store.save(meta, request.artifact)
        await self._stores.announce_model(meta.key, meta.version)
        log.info("model.imported", model=meta.id, family=key.family, model_type=key.model_type,
                 size=len(request.artifact))
        return meta

    def _import_key(self, account_id: str, request: ImportRequest) -> ModelKey:
        strat = rules.name(request.strat, "a strategy name")
        family = self.family(request.family)
        model_type = rules.model_type(request.model_type)
        rules.window(request.window)
        return ModelKey(account_id, strat, family.name, model_type)

    async def job(self, account_id: str, job_id: str) -> TrainingJob:
        if self._jobs is None:
            raise NotFound(f"no training job {job_id}")
        return await self._jobs.get(account_id, job_id)

    async def cancel_job(self, account_id: str, job_id: str) -> TrainingJob:
        """Stop a queued or running job (a finished one stays as it ended)."""
        if self._jobs is None:
            raise NotFound(f"no training job {job_id}")
        return await self._jobs.cancel(account_id, job_id)

    async def latest(self, key: ModelKey) -> ModelMeta | None:
        return await self._store.latest(key)

    async def versions(self, account_id: str) -> list[ModelVersion]:
        """Every version of every model, newest first within each model."""
        metas = await self._store.list(account_id)
        newest: dict[str, int] = {}
        for meta in metas:
            newest[meta.key.id] = max(newest.get(meta.key.id, 0), meta.version)
        metas.sort(key=lambda m: (m.key.strat, m.key.family, m.key.model_type, -m.version))
        return [ModelVersion(m, m.version == newest[m.key.id]) for m in metas]

    async def delete(self, account_id: str, wanted: str) -> list[ModelMeta]:
        """``mdl_...-vN`` deletes that version; ``mdl_...`` the model, every version."""
        doomed = [meta for meta in await self._store.list(account_id)
                  if wanted in (meta.id, meta.key.id)]
        if not doomed:
            raise NotFound(f"no model {wanted}")
        for meta in doomed:
            await self._store.delete(meta)
        for key in {meta.key for meta in doomed}:
            await self._stores.announce_model(key, None)
        return doomed

