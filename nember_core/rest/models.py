"""``/api/models`` and ``/api/jobs``: list, train from an uploaded CSV, follow, delete."""

from __future__ import annotations

import asyncio
import json
import uuid

from aiohttp import web

from .. import commands
from ..dataset import read_csv
from ..errors import InvalidData, NotFound
from ..jobs import TrainingJob
from ..records import MODEL_TYPES, ModelKey, ModelMeta
from ..training import MAX_WINDOW
from .auth import caller
from .context import API, iso, items
from .errors import ApiError

FIELDS = ("strat", "model", "type", "target", "window", "features", "params")
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
        "request_example": example,
    }


async def _all_versions(request: web.Request, account_id: str) -> list[ModelMeta]:
    return await request.app[API].services.model_store.list(account_id)


async def list_models(request: web.Request) -> web.Response:
    me = await caller(request)
    metas = await _all_versions(request, me.account_id)
    newest: dict[str, int] = {}
    for meta in metas:
        newest[meta.key.id] = max(newest.get(meta.key.id, 0), meta.version)
    metas.sort(key=lambda m: (m.key.strat, m.key.family, m.key.model_type, -m.version))
    return items([describe(m, m.version == newest[m.key.id]) for m in metas])


async def delete_model(request: web.Request) -> web.Response:
    """``mdl_...-vN`` deletes that version; ``mdl_...`` deletes the model, every version."""
    me = await caller(request)
    wanted = request.match_info["id"]
    doomed = [
        meta for meta in await _all_versions(request, me.account_id)
        if wanted in (meta.id, meta.key.id)
    ]
    if not doomed:
        raise NotFound(f"no model {wanted}")
    store = request.app[API].services.model_store
    for meta in doomed:
        await store.delete(meta)
    return web.json_response({"deleted": [meta.id for meta in doomed]})


async def train_model(request: web.Request) -> web.Response:
    me = await caller(request)
    api = request.app[API]
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, "Send the training request as multipart/form-data with the CSV as "
                            "'data'.")
    uploads = api.config.data_dir / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    path = uploads / f"{uuid.uuid4().hex}.csv"
    try:
        fields = await _read_form(request, path, api.config.server.max_upload_size)
        key, spec = await _training_spec(api, me.account_id, fields, path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    job = await api.jobs.submit(spec, key, cleanup=path)
    return web.json_response(job_json(job), status=202)


async def _read_form(request: web.Request, path, limit: int) -> dict[str, str]:
    fields: dict[str, str] = {}
    got_data = False
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if part.name == "data":
            size = 0
            with open(path, "wb") as out:
                while chunk := await part.read_chunk(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise ApiError(413, f"The CSV is larger than the limit of {limit} bytes.")
                    out.write(chunk)
            got_data = True
        elif part.name in FIELDS:
            fields[part.name] = (await part.text()).strip()
        else:
            raise ApiError(422, f"Unknown form field {part.name!r}; expected 'data' and "
                                f"{', '.join(repr(f) for f in FIELDS)}.")
    if not got_data:
        raise ApiError(422, "The CSV file is missing: send it as the form field 'data'.")
    return fields


async def _training_spec(api, account_id: str, fields: dict[str, str], path):
    for name in ("strat", "model", "type", "target"):
        if not fields.get(name):
            raise ApiError(422, f"The form field {name!r} is required.")
    strat = fields["strat"]
    if len(strat) > commands.MAX_NAME:
        raise ApiError(422, f"'strat' must have at most {commands.MAX_NAME} characters.")
    if fields["type"] not in MODEL_TYPES:
        raise ApiError(422, "'type' must be 'class' or 'reg'.")
    family = api.nember.families.get(fields["model"])
    if family is None:
        known = ", ".join(sorted(api.nember.families))
        raise ApiError(422, f"No installed model family {fields['model']!r} (installed: {known}).")
    try:
        window = int(fields.get("window") or 1)
    except ValueError:
        raise ApiError(422, "'window' must be a whole number.") from None
    if not 1 <= window <= MAX_WINDOW:
        raise ApiError(422, f"'window' must be between 1 and {MAX_WINDOW}.")
    features = None
    if fields.get("features"):
        features = [name.strip() for name in fields["features"].split(",") if name.strip()]
    try:
        params = json.loads(fields.get("params") or "{}")
    except ValueError:
        raise ApiError(422, "'params' must be a JSON object of hyperparameters.") from None
    if not isinstance(params, dict):
        raise ApiError(422, "'params' must be a JSON object of hyperparameters.")
    # Read the CSV once here, so a wrong column or a ragged file is a 422 now, not a failed job.
    try:
        await asyncio.to_thread(read_csv, path, fields["target"], features)
    except InvalidData as exc:
        raise ApiError(422, str(exc).replace(str(path), "the CSV")) from None
    key = ModelKey(account_id, strat, family.name, fields["type"])
    spec = {"data": path, "target": fields["target"], "window": window, "features": features,
            "params": params}
    return key, spec


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
    job = await request.app[API].jobs.get(me.account_id, request.match_info["id"])
    return web.json_response(job_json(job))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/models", list_models)
    router.add_post("/api/models", train_model)
    router.add_delete("/api/models/{id}", delete_model)
    router.add_get("/api/jobs/{id}", get_job)
