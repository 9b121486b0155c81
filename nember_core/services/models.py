"""Models: training (here, or as a background job), importing, versions, deleting, families."""

from __future__ import annotations

import asyncio
import bz2
import io
import lzma
import pickle
import re
import zipfile
import zlib
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import structlog

from nember_core import rules
from nember_core.errors import InvalidData, ModelFileRejected, NemberError, NotFound
from nember_core.plugin_api import ModelFamily, Predictor
from nember_core.records import ModelKey, ModelMeta, TrainingJob, artifact_digest, utcnow
from nember_core.stores import Stores
from nember_core.training.dataset import _label, check_header, read_csv, shown_as
from nember_core.training.evaluation import Settings
from nember_core.training.trainer import Progress, train
from nember_core.worker_pool import spawn_pool, stop_pool

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
        """Check a model file made elsewhere and store it as the next version.

        The file is loaded and asked one row of zeros of the declared width in a process of
        its own: a library that crashes on a crafted file takes only that process down. What
        loaded there loads the same in every server."""
        key = self._import_key(account_id, request)
        features = tuple(_feature_names(request.features))
        classes = _class_labels(request.classes, key.model_type)
        target = rules.name(request.target, "the target's name")
        _check_file(request.artifact, request.label)
        family = self.families[key.family]
        classes = await _inspect_apart(family, key.model_type, request.artifact,
                                       len(features), request.window, classes, request.label)
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


# --- importing -------------------------------------------------------------------------------

IMPORT_TIMEOUT = 300.0  # seconds the check of one model file may take
MAX_CLASSES = 1000  # as training allows


def class_labels(text: str) -> list[Any]:
    """Comma-separated class labels as a CLI or a form writes them; each read as a CSV's
    target cell is (``1`` an int, ``0.5`` a float, ``up`` a string), so that answers carry
    the labels as a model trained on that CSV would."""
    return [_label(part.strip()) for part in text.split(",") if part.strip()]


def _feature_names(names: Any) -> list[str]:
    if not isinstance(names, (list, tuple)) or not names:
        raise InvalidData("name the model's features, in the order of its input")
    if len(names) > rules.MAX_FEATURES:
        raise InvalidData(f"at most {rules.MAX_FEATURES} features are supported")
    checked = [rules.name(name, "a feature name") for name in names]
    twice = next((name for i, name in enumerate(checked) if name in checked[:i]), None)
    if twice is not None:
        raise InvalidData(f"the feature {twice!r} is named twice")
    return checked


def _class_labels(labels: Any, model_type: str) -> tuple[Any, ...] | None:
    if labels is None:
        return None
    if model_type == "reg":
        raise InvalidData("classes name a class model's labels; a reg model has none")
    if not isinstance(labels, (list, tuple)) or not 2 <= len(labels) <= MAX_CLASSES:
        raise InvalidData(f"name 2 to {MAX_CLASSES} classes, the label of each class index "
                          "in order")
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, (int, float, str)) or (
                isinstance(label, str) and not label.strip()):
            raise InvalidData(f"a class label must be a number or a text, not {label!r}")
    if len(set(labels)) != len(labels):
        raise InvalidData("each class label must be named once")
    return tuple(labels)


CODE = ("pickle files can run code when loaded, so Nember refuses them; export the model to "
        "ONNX instead (or save it in its library's own format)")
PICKLE_MEMBERS = (".pkl", ".pickle", ".joblib", ".pt", ".pth")
# Protocol 0 and 1 pickles open with a GLOBAL: "c" module "\n" name "\n".
OLD_PICKLE = re.compile(rb"c[A-Za-z_][\w.]*\n[A-Za-z_][\w.]*\n")


def _check_file(data: bytes, label: str) -> None:
    """Files whose loading runs code (pickles, joblib's, PyTorch's archives of them) are
    refused by their bytes, before any library sees them; so is an empty one."""
    if not isinstance(data, bytes) or not data:
        raise ModelFileRejected(f"{label} is empty")
    kind = _code_kind(data)
    if kind is not None:
        raise ModelFileRejected(f"{label} is {kind}: {CODE}")


def _code_kind(data: bytes) -> str | None:
    if _is_pickle(data):
        return "a Python pickle"
    if data[:4] == b"PK\x03\x04" and _zip_of_pickles(data):
        return "an archive of Python pickles (joblib, PyTorch)"
    if _is_pickle(_unpacked_head(data)):
        return "a compressed Python pickle (joblib)"
    return None


def _is_pickle(data: bytes) -> bool:
    return (data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")) or (
        OLD_PICKLE.match(data[:300]) is not None)


def _zip_of_pickles(data: bytes) -> bool:
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except (zipfile.BadZipFile, ValueError):
        return False
    return any(name.lower().endswith(PICKLE_MEMBERS) for name in names)


def _unpacked_head(data: bytes) -> bytes:
    """The first bytes of a zlib, gzip, bz2 or xz stream (joblib's compressions), else b""."""
    head = data[:4096]
    try:
        if head[:1] == b"\x78":
            return zlib.decompressobj().decompress(head, 16)
        if head[:2] == b"\x1f\x8b":
            return zlib.decompressobj(wbits=31).decompress(head, 16)
        if head[:3] == b"BZh":
            return bz2.BZ2Decompressor().decompress(head, 16)
        if head[:6] == b"\xfd7zXZ\x00":
            return lzma.LZMADecompressor().decompress(head, 16)
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError):
        pass
    return b""


async def _inspect_apart(family: ModelFamily, model_type: str, artifact: bytes,
                         features: int, window: int, classes: tuple[Any, ...] | None,
                         label: str) -> tuple[Any, ...] | None:
    """``inspect_model`` in a process of its own: a crash or a hang there is one error."""
    try:
        pickle.dumps(family)
    except Exception:  # a family the child can't rebuild (defined inside a function): here
        return await asyncio.to_thread(inspect_model, family, model_type, artifact, features,
                                       window, classes, label)
    pool = spawn_pool(1)
    try:
        running = asyncio.get_running_loop().run_in_executor(
            pool, inspect_model, family, model_type, artifact, features, window, classes,
            label)
        return await asyncio.wait_for(running, IMPORT_TIMEOUT)
    except BrokenProcessPool:
        raise ModelFileRejected(f"{label}: the {family.name} library crashed loading it") \
            from None
    except TimeoutError:
        raise ModelFileRejected(f"{label}: loading it took over {IMPORT_TIMEOUT:g} s") \
            from None
    finally:
        stop_pool(pool)


def inspect_model(family: ModelFamily, model_type: str, artifact: bytes, features: int,
                  window: int, classes: tuple[Any, ...] | None,
                  label: str) -> tuple[Any, ...] | None:
    """Load a model file with its family and ask it one row of zeros of the declared width,
    through the paths a server uses; return the class labels (named, else 0..k-1), or
    ``None`` for a reg model. Raises one clear error for anything a server couldn't serve."""
    try:
        model = family.loads(artifact, model_type)
    except Exception as exc:  # ModelFileRejected, or the library's own error on a bad file
        raise ModelFileRejected(f"{label} doesn't load as a model of the {family.name} "
                                f"family: {_line(exc)}") from None
    width = features * window
    zeros = np.zeros((1, width))
    try:
        batch = np.asarray(family.predict(model, model_type, zeros))
        built = family.predictor(model, model_type)
        if not isinstance(built, Predictor):  # a bare single-row function is enough
            built = Predictor(one=built)
        one = built.one(zeros)
        proba = built.proba(zeros) if model_type == "class" and built.proba else None
    except Exception as exc:
        plural = "s" if features > 1 else ""
        raise ModelFileRejected(f"{label}: the model can't answer a row of {features} "
                                f"feature{plural} x window {window} = {width} inputs: "
                                f"{_line(exc)}") from None
    if batch.size != 1:
        raise ModelFileRejected(f"{label}: the model gave {batch.size} outputs for one row, "
                                "not one")
    if model_type == "reg":
        _number(one, label)
        return None
    return _check_classes(one, proba, classes, label)


def _number(value: Any, label: str) -> float:
    try:
        if isinstance(value, (bool, str, bytes)):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise ModelFileRejected(f"{label}: a reg model must output a number per row, not "
                                f"{value!r}") from None


def _check_classes(one: Any, proba: Any, classes: tuple[Any, ...] | None,
                   label: str) -> tuple[Any, ...]:
    count = len(classes) if classes is not None else None
    if proba is not None:
        values = np.asarray(proba, dtype=np.float64).reshape(-1)
        if count is not None and values.size != count:
            raise ModelFileRejected(f"{label}: the model gives probabilities for {values.size} "
                                    f"classes, but {count} classes were named")
        if not (np.isfinite(values).all() and (values >= -1e-6).all()
                and abs(values.sum() - 1.0) < 1e-3):
            raise ModelFileRejected(f"{label}: the model's class probabilities are not "
                                    "probabilities (each from 0 to 1, summing to 1); a model "
                                    "ending with raw scores needs a softmax")
        count = values.size
    if count is None:
        raise InvalidData(f"{label}: the model gives no class probabilities to count its "
                          "classes by: name them (the label of each class index, in order)")
    index = _class_index(one)
    if index is None or not 0 <= index < count:
        raise ModelFileRejected(f"{label}: a class model must output a class index from 0 to "
                                f"{count - 1}; this one gave {one!r} for a row of zeros")
    return classes if classes is not None else tuple(range(count))


def _class_index(value: Any) -> int | None:
    if isinstance(value, (bool, np.bool_, str, bytes)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
