"""``/api/models`` and ``/api/jobs``: list, train from an uploaded CSV, import a model trained
elsewhere, follow, delete."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import BadHttpMessage

from nember_core.records import ModelMeta, TrainingJob
from nember_core.services import ImportRequest, TrainingRequest, class_labels

from .auth import caller
from .context import CONTEXT, iso, items, services
from .errors import ApiError

UPLOADS = "uploads"  # in data_dir: uploads being checked, and claimed jobs' CSVs while they run
STALE_UPLOAD_SECONDS = 24 * 3600


def sweep_uploads(data_dir: Path) -> int:
    """Delete uploads a day old: left by jobs whose server was killed (a job deletes its own
    when it ends). Returns how many."""
    cutoff = time.time() - STALE_UPLOAD_SECONDS
    swept = 0
    for upload in (data_dir / UPLOADS).glob("*.csv"):
        try:
            if upload.stat().st_mtime < cutoff:
                upload.unlink()
                swept += 1
        except FileNotFoundError:  # another server process swept it first
            pass
    return swept


FIELDS = ("strat", "model", "type", "target", "window", "features", "params", "skip_warmup",
          "folds", "horizon", "returns", "bars_per_year")
CHUNK = 256 * 1024


def describe(meta: ModelMeta, latest: bool) -> dict:
    example = {
        "strat_name": meta.key.strat,
        "model_name": meta.key.family,
        "model_type": meta.key.model_type,
        "DataPoints": [{name: 0.0 for name in meta.features} for _ in range(meta.window)],
    }
    return {
        "id": meta.id,
        "model_id": meta.key.id,
        "strat": meta.key.strat,
        "model": meta.key.family,
        "type": meta.key.model_type,
        "version": meta.version,
        "latest": latest,
        "features": list(meta.features),
        "window": meta.window,
        "target": meta.target,
        "classes": None if meta.classes is None else list(meta.classes),
        "params": meta.params,
        "metrics": meta.metrics,
        "samples": meta.samples,
        "family_version": meta.family_version,
        "trained_at": iso(meta.trained_at),
        "training_seconds": meta.training_seconds,
        "evaluation": meta.evaluation,
        "warnings": list((meta.evaluation or {}).get("warnings", [])),
        "request_example": example,
    }


async def list_models(request: web.Request) -> web.Response:
    me = await caller(request)
    versions = await services(request).models.versions(me.account_id)
    return items([describe(v.meta, v.latest) for v in versions])


async def delete_model(request: web.Request) -> web.Response:
    """``mdl_...-vN`` deletes that version; ``mdl_...`` deletes the model, every version."""
    me = await caller(request)
    doomed = await services(request).models.delete(me.account_id, request.match_info["id"])
    return web.json_response({"deleted": [meta.id for meta in doomed]})


async def train_model(request: web.Request) -> web.Response:
    me = await caller(request)
    config = request.app[CONTEXT].config
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, "Send the training request as multipart/form-data with the CSV as "
                            "'data'.")
    uploads = config.data_dir / UPLOADS
    uploads.mkdir(parents=True, exist_ok=True)
    path = uploads / f"{uuid.uuid4().hex}.csv"
    try:
        fields = await _read_form(request, path, config.server.max_upload_size)
        job = await services(request).models.submit(
            me.account_id, _training_request(fields, path), cleanup=path
        )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return web.json_response(job_json(job), status=202)


async def _read_form(request: web.Request, path, limit: int) -> dict[str, str]:
    with open(path, "wb") as out:
        fields, got_data = await _multipart(request, "data", FIELDS, out.write, limit, "The CSV")
    if not got_data:
        raise ApiError(422, "The CSV file is missing: send it as the form field 'data'.")
    return fields


async def _multipart(request: web.Request, file_field: str, known: tuple[str, ...], sink,
                     limit: int, what: str) -> tuple[dict[str, str], bool]:
    """The form's text fields; the ``file_field`` part's bytes go to ``sink`` chunk by chunk,
    at most ``limit`` of them. Also says whether that part came."""
    try:
        return await _parts(request, file_field, known, sink, limit, what)
    # aiohttp's parser on a malformed body; BadHttpMessage: a part's header it can't read
    except (ValueError, UnicodeDecodeError, BadHttpMessage):
        raise ApiError(400, "The body is not a valid multipart/form-data form with UTF-8 "
                            "fields.") from None


async def _parts(request: web.Request, file_field: str, known: tuple[str, ...], sink,
                 limit: int, what: str) -> tuple[dict[str, str], bool]:
    fields: dict[str, str] = {}
    got_file = False
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):  # a form nested in the form
            raise ApiError(400, "Send each form field as a plain part, not a nested form.")
        if part.name == file_field:
            size = 0
            while chunk := await part.read_chunk(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"{what} is larger than the limit of {limit} bytes.")
                sink(chunk)
            got_file = True
        elif part.name in known:
            fields[part.name] = (await part.text()).strip()
        else:
            shown = repr(part.name) if part.name else "without a name"
            raise ApiError(422, f"Unknown form field {shown}; expected {file_field!r} and "
                                f"{', '.join(repr(f) for f in known)}.")
    return fields, got_file


def _require(fields: dict[str, str], names: tuple[str, ...]) -> None:
    for name in names:
        if not fields.get(name):
            raise ApiError(422, f"The form field {name!r} is required.")


def _window(fields: dict[str, str]) -> int:
    try:
        return int(fields.get("window") or 1)
    except ValueError:
        raise ApiError(422, "'window' must be a whole number.") from None


def _names(text: str) -> list[str]:
    """Comma-separated names, as a form field gives them."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _training_request(fields: dict[str, str], path) -> TrainingRequest:
    """The form's fields as a request; the service layer checks the rest."""
    _require(fields, ("strat", "model", "type", "target"))
    window = _window(fields)
    features = _names(fields["features"]) if fields.get("features") else None
    try:
        params = json.loads(fields.get("params") or "{}")
    except ValueError:
        raise ApiError(422, "'params' must be a JSON object of hyperparameters.") from None
    if not isinstance(params, dict):
        raise ApiError(422, "'params' must be a JSON object of hyperparameters.")
    skip_warmup = (fields.get("skip_warmup") or "false").lower()
    if skip_warmup not in ("true", "false"):
        raise ApiError(422, "'skip_warmup' must be true or false.")
    try:
        folds = int(fields.get("folds") or 5)
        horizon = int(fields.get("horizon") or 1)
    except ValueError:
        raise ApiError(422, "'folds' and 'horizon' must be whole numbers.") from None
    try:
        bars_per_year = float(fields.get("bars_per_year") or 252)
    except ValueError:
        raise ApiError(422, "'bars_per_year' must be a number.") from None
    return TrainingRequest(strat=fields["strat"], family=fields["model"],
                           model_type=fields["type"], data=path, target=fields["target"],
                           window=window, features=features, params=params,
                           skip_warmup=skip_warmup == "true", folds=folds, horizon=horizon,
                           returns=fields.get("returns") or None, bars_per_year=bars_per_year,
                           data_label="the CSV")


IMPORT_FIELDS = ("strat", "model", "type", "features", "window", "classes", "target")


async def import_model(request: web.Request) -> web.Response:
    """A model file trained elsewhere (multipart: ``file`` and the fields), checked and
    stored as the next version: 201 with the version, as ``GET /api/models`` lists it."""
    me = await caller(request)
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, "Send the model as multipart/form-data with the file as 'file'.")
    limit = request.app[CONTEXT].config.server.max_upload_size
    artifact = bytearray()
    fields, got_file = await _multipart(request, "file", IMPORT_FIELDS, artifact.extend, limit,
                                        "The model file")
    if not got_file:
        raise ApiError(422, "The model file is missing: send it as the form field 'file'.")
    meta = await services(request).models.import_model(me.account_id,
                                                       _import_request(fields, bytes(artifact)))
    return web.json_response(describe(meta, latest=True), status=201)


def _import_request(fields: dict[str, str], artifact: bytes) -> ImportRequest:
    """The form's fields as a request; the service layer checks the rest."""
    _require(fields, ("strat", "model", "type", "features"))
    window = _window(fields)
    features = _names(fields["features"])
    classes = class_labels(fields["classes"]) if fields.get("classes") else None
    return ImportRequest(strat=fields["strat"], family=fields["model"],
                         model_type=fields["type"], artifact=artifact, features=features,
                         window=window, classes=classes,
                         target=fields.get("target") or "imported",
                         label="the uploaded file")


def job_json(job: TrainingJob) -> dict:
    return {
        "id": job.id,
        "state": job.state,
        "progress": job.progress,
        "stage": job.stage,
        "error": job.error,
        "model_id": job.model_id,
        "version": job.version,
        "strat": job.key.strat,
        "model": job.key.family,
        "type": job.key.model_type,
        "created_at": iso(job.created_at),
        "finished_at": iso(job.finished_at),
    }


async def get_job(request: web.Request) -> web.Response:
    me = await caller(request)
    job = await services(request).models.job(me.account_id, request.match_info["id"])
    return web.json_response(job_json(job))


async def cancel_job(request: web.Request) -> web.Response:
    me = await caller(request)
    job = await services(request).models.cancel_job(me.account_id, request.match_info["id"])
    return web.json_response(job_json(job))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/models", list_models)
    router.add_post("/api/models", train_model)
    router.add_post("/api/models/import", import_model)
    router.add_delete("/api/models/{id}", delete_model)
    router.add_get("/api/jobs/{id}", get_job)
    router.add_delete("/api/jobs/{id}", cancel_job)
