"""The OpenAPI 3.1 description of the REST API, served at ``/api/openapi.json``.

A test checks that its paths and methods are exactly the app's ``/api/`` routes; schemathesis
(tests/inprocess/test_openapi_conformance.py) that every answer is one it describes.
"""

from __future__ import annotations

from aiohttp import web

from nember_core import __version__, rules


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _list_of(name: str) -> dict:
    return {"type": "object", "required": ["items"],
            "properties": {"items": {"type": "array", "items": _ref(name)}}}


def _all(properties: dict) -> dict:
    """An object that always has every one of ``properties`` (some may be null)."""
    return {"type": "object", "required": list(properties), "properties": properties}


ERROR = _json(_ref("Error"), "An error, as one clear sentence")
TIME = {"type": ["string", "null"], "format": "date-time"}
ID_PARAM = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
NAME = {"type": "string", "minLength": 1, "maxLength": rules.MAX_NAME}
MODEL_TYPE = {"enum": list(rules.MODEL_TYPES)}
COUNTS = {"connections": {"type": "integer"}, "predictions": {"type": "integer"},
          "errors": {"type": "integer"},
          "amount": {"type": "string", "description": "Decimal, exact"}}


def _errors(*codes: int) -> dict:
    """Every route may answer 401 (who are you?) and 403 (a key's scope allows less)."""
    return {str(code): ERROR for code in (401, 403, *codes)}


SCOPE = {"enum": list(rules.SCOPES),
         "description": "predict: /ws only; read: and the GET routes; manage: every route"}


SCHEMAS = {
    "Error": {"type": "object", "required": ["error"],
              "properties": {"error": {"type": "string"}}},
    "Key": _all({
        "id": {"type": "string"}, "name": {"type": "string"}, "prefix": {"type": "string"},
        "scope": SCOPE, "created_at": TIME, "revoked_at": TIME,
        "live_connections": {"type": "integer"}}),
    "NewKey": {"allOf": [_ref("Key"), {"type": "object", "required": ["key"], "properties": {
        "key": {"type": "string", "description": "The full API key, shown only this once."}}}]},
    "RevokedKey": {"allOf": [_ref("Key"), {
        "type": "object", "required": ["already_revoked"], "properties": {
            "already_revoked": {"type": "boolean", "description":
                                "It was revoked before this call (at revoked_at): unchanged"}}}]},
    "Model": _all({
        "id": {"type": "string", "description": "This version: model_id-vN"},
        "model_id": {"type": "string", "description": "The model, every version"},
        "strat": {"type": "string"}, "model": {"type": "string"},
        "type": MODEL_TYPE, "version": {"type": "integer"},
        "latest": {"type": "boolean"}, "features": {"type": "array", "items": {"type": "string"}},
        "window": {"type": "integer"}, "target": {"type": "string"},
        "classes": {"type": ["array", "null"]}, "params": {"type": "object"},
        "metrics": {"type": "object"}, "samples": {"type": "integer"},
        "family_version": {"type": "string"}, "trained_at": TIME,
        "training_seconds": {"type": "number"},
        "evaluation": {"type": ["object", "null"], "description":
                       "The walk-forward evaluation: folds, metrics, coverage, calibration, "
                       "backtest, notes, warnings (null for models trained before it)"},
        "warnings": {"type": "array", "items": {"type": "string"}, "description":
                     "Features that look computed from later rows, scores too good to be true"},
        "request_example": {"type": "object", "description": "A websocket request to paste"}}),
    "Job": _all({
        "id": {"type": "string"},
        "state": {"enum": ["queued", "running", "succeeded", "failed"]},
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "stage": {"type": "string"}, "error": {"type": ["string", "null"]},
        "model_id": {"type": ["string", "null"], "description": "The trained version's id"},
        "version": {"type": ["integer", "null"]}, "strat": {"type": "string"},
        "model": {"type": "string"}, "type": MODEL_TYPE,
        "created_at": TIME, "finished_at": TIME}),
    "Connection": _all({
        "id": {"type": "string"}, "key_id": {"type": "string"}, "key_name": {"type": "string"},
        "remote": {"type": "string"}, "node": {"type": "string"}, "opened_at": TIME,
        "predictions": {"type": "integer"}, "errors": {"type": "integer"},
        "last_request_at": TIME}),
    "ConnectionUsage": _all({
        "connection_id": {"type": "string"}, "key_id": {"type": "string"},
        "remote": {"type": "string"}, "opened_at": TIME, "closed_at": TIME,
        "close_code": {"type": ["integer", "null"]},
        "close_reason": {"type": ["string", "null"]}, "live": {"type": "boolean"},
        "predictions": {"type": "integer"}, "errors": {"type": "integer"},
        "amount": COUNTS["amount"], "currency": {"type": "string"}}),
    "Usage": _all({
        "currency": {"type": "string"},
        "items": {"type": "array", "items": _ref("ConnectionUsage")},
        "days": {"type": "array", "items": _all({
            "day": {"type": "string", "format": "date", "description": "UTC"}, **COUNTS})},
        "totals": _all(COUNTS)}),
}

PATHS = {
    "/api/openapi.json": {"get": {
        "summary": "This document", "security": [],
        "responses": {"200": {"description": "OpenAPI 3.1"}}}},
    "/api/keys": {
        "get": {"summary": "The account's API keys",
                "responses": {"200": _json(_list_of("Key"), "Keys"), **_errors()}},
        "post": {"summary": "Create an API key",
                 "requestBody": {"required": True, "content": {"application/json": {"schema": {
                     "type": "object", "properties": {
                         "name": {**NAME, "default": "default"},
                         "scope": {**SCOPE, "default": "predict",
                                   "description": "At most the caller's own scope"}}}}}},
                 "responses": {"201": _json(_ref("NewKey"), "The new key, shown once"),
                               **_errors(400, 413, 422)}}},
    "/api/keys/{id}": {"delete": {
        "summary": "Revoke a key; its live connections close with 4401",
        "parameters": ID_PARAM,
        "responses": {"200": _json(_ref("RevokedKey"), "The revoked key, and whether it "
                                   "was revoked already"), **_errors(404)}}},
    "/api/models": {
        "get": {"summary": "Every version of the account's models",
                "responses": {"200": _json(_list_of("Model"), "Models"), **_errors()}},
        "post": {"summary": "Train a model from a CSV (a background job)",
                 "requestBody": {"required": True, "content": {"multipart/form-data": {
                     "schema": {"type": "object", "required": ["data", "strat", "model", "type",
                                                               "target"],
                                "additionalProperties": False,  # others are refused, 422
                                "properties": {
                                    "data": {"type": "string", "format": "binary"},
                                    "strat": NAME, "model": {"type": "string", "minLength": 1},
                                    "type": MODEL_TYPE,
                                    "target": {"type": "string", "minLength": 1},
                                    "window": {"type": "integer", "default": 1, "minimum": 1,
                                               "maximum": rules.MAX_WINDOW},
                                    "features": {"type": "string",
                                                 "description": "Comma-separated"},
                                    "params": {"type": "string",
                                               "description": "JSON object"},
                                    "folds": {"type": "integer", "default": 5,
                                              "minimum": 1, "maximum": rules.MAX_FOLDS},
                                    "horizon": {"type": "integer", "default": 1,
                                                "minimum": 0, "maximum": rules.MAX_HORIZON,
                                                "description": "Rows the target looks ahead"},
                                    "returns": {"type": "string", "description":
                                                "The column of each row's next-bar return "
                                                "(a fraction): backtests the signal"},
                                    "bars_per_year": {"type": "number", "default": 252,
                                                      "exclusiveMinimum": 0,
                                                      "maximum": 1e7},
                                    "skip_warmup": {
                                        "type": "string", "enum": ["true", "false"],
                                        "default": "false",
                                        "description": "Drop the leading rows whose features "
                                                       "or target are still empty"}}}}}},
                 "responses": {"202": _json(_ref("Job"), "The queued job"),
                               **_errors(400, 413, 422)}}},
    "/api/models/import": {"post": {
        "summary": "Import a model trained elsewhere (ONNX, XGBoost, LightGBM) and serve it",
        "description": "The file is loaded and asked one row of zeros of the declared width "
                       "(window x features, oldest data point first) before it is stored; "
                       "a file that doesn't load or doesn't fit is refused (400), pickles "
                       "too (loading them runs code).",
        "requestBody": {"required": True, "content": {"multipart/form-data": {
            "schema": {"type": "object", "required": ["file", "strat", "model", "type",
                                                      "features"],
                       "additionalProperties": False,  # others are refused, 422
                       "properties": {
                           "file": {"type": "string", "format": "binary", "description":
                                    "An ONNX file (model ONNX), or the library's own model "
                                    "file (XGBoost JSON or UBJSON, LightGBM text)"},
                           "strat": NAME, "model": {"type": "string", "minLength": 1},
                           "type": MODEL_TYPE,
                           "features": {"type": "string", "minLength": 1, "description":
                                        "Comma-separated, in the order of the model's input"},
                           "window": {"type": "integer", "default": 1, "minimum": 1,
                                      "maximum": rules.MAX_WINDOW},
                           "classes": {"type": "string", "description":
                                       "Class models: the label of each class index, "
                                       "comma-separated, in order (default: 0, 1, ...)"},
                           "target": {**NAME, "default": "imported",
                                      "description": "What the model predicts, for listings"},
                       }}}}},
        "responses": {"201": _json(_ref("Model"), "The stored version"),
                      **_errors(400, 413, 422)}}},
    "/api/models/{id}": {"delete": {
        "summary": "Delete a version (model_id-vN) or a model with every version (model_id)",
        "parameters": ID_PARAM,
        "responses": {"200": _json(_all({"deleted": {"type": "array", "items": {
            "type": "string"}, "description": "The deleted versions' ids"}}), "What was deleted"),
            **_errors(404)}}},
    "/api/jobs/{id}": {
        "get": {"summary": "A training job's state and progress", "parameters": ID_PARAM,
                "responses": {"200": _json(_ref("Job"), "The job"), **_errors(404)}},
        "delete": {"summary": "Cancel a queued or running job (it ends 'failed', 'cancelled "
                              "by its owner'); a finished one is left as it ended",
                   "parameters": ID_PARAM,
                   "responses": {"200": _json(_ref("Job"), "The job"), **_errors(404)}}},
    "/api/families": {"get": {
        "summary": "The installed model families",
        "responses": {"200": _json({"type": "object", "required": ["items"], "properties": {
            "items": {"type": "array", "items": _all({
                "name": {"type": "string"}, "library_version": {"type": "string"},
                # False: its models are imported (POST /api/models/import), never trained.
                "trainable": {"type": "boolean"}})}}},
            "Families"), **_errors()}}},
    "/api/connections": {"get": {
        "summary": "The account's live websocket connections",
        "responses": {"200": _json(_list_of("Connection"), "Connections"), **_errors()}}},
    "/api/connections/{id}": {"delete": {
        "summary": "Close a live connection with code 4000", "parameters": ID_PARAM,
        "responses": {"200": _json(_all({"id": {"type": "string"}, "closed": {"const": True}}),
                                   "Closed"), **_errors(404)}}},
    "/api/usage": {"get": {
        "summary": "Charges and counts per connection and per day, with totals",
        "parameters": [{"name": "format", "in": "query", "required": False,
                        "schema": {"enum": ["json", "csv"]}}],
        "responses": {"200": {
            "description": "Usage as JSON; with format=csv, one row per connection as CSV",
            "content": {"application/json": {"schema": _ref("Usage")},
                        "text/csv": {"schema": {"type": "string"}}}},
            **_errors(400)}}},
}

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "Nember REST API", "version": __version__,
             "description": "Accounts' API keys, models, training jobs, live connections and "
                            "usage. Times are ISO 8601 in UTC with microseconds."},
    "security": [{"bearer": []}, {"session": []}],
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "An API key of the account"},
            "session": {"type": "apiKey", "in": "cookie", "name": "nember_session",
                        "description": "The dashboard's session; changes also need the "
                                       "X-CSRF-Token header"},
        },
        "schemas": SCHEMAS,
    },
    "paths": PATHS,
}


async def handler(request: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)
