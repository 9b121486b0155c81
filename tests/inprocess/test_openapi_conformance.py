"""Schemathesis against the REST API's own OpenAPI document: no 5xx, every answer as documented.

The app is served on a loopback port of this process (``client``); schemathesis calls it with
``requests``, which blocks, so the calls run in a worker thread while the event loop serves.
Generated ids never name a real key, model, job or connection, so a second test asks about
real ones: their 200 answers are checked against the document too.
"""

from __future__ import annotations

import asyncio

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.errors import FailureGroup

from tests.helpers import request

from .conftest import ask, authed

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
# Requests per operation, generation mode and caller: 12 x 2 x 3 runs of them take ~10 s.
EXAMPLES = 15


def _load(base: str):
    return schemathesis.openapi.from_url(f"{base}/api/openapi.json")


def _bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def _fuzz(base: str, key: str) -> list[str]:
    """Every operation, valid and invalid requests, from each kind of caller; the failures,
    each with its curl command, so one run shows them all."""
    schema = _load(base)
    read_key = _call(schema, base, key, "POST", "/api/keys",
                     body={"name": "read only", "scope": "read"}).json()["key"]
    # A manage key reaches every route; a read key is refused changes (403); no key, or the
    # random Authorization headers and session cookies schemathesis sends, are 401s.
    callers = {"a manage key": _bearer(key), "a read key": _bearer(read_key), "no key": {}}
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for who, headers in callers.items():
                try:
                    _examples(base, operation, mode, headers)
                # A failed check is a FailureGroup, a BaseExceptionGroup, not an Exception.
                except (Exception, FailureGroup) as exc:
                    failures.append(f"{operation.label} ({mode.value}, {who}): {exc}")
    return failures


def _examples(base, operation, mode, headers) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              report_multiple_bugs=False, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        case.call_and_validate(base_url=base, headers=headers, checks=CHECKS)

    check()


def _call(schema, base: str, key: str, method: str, path: str, **case):
    """One request made by hand, its answer checked against the document like the others."""
    return schema[path][method].Case(**case).call_and_validate(
        base_url=base, headers=_bearer(key), checks=CHECKS)


async def test_no_request_gets_a_5xx_or_an_undocumented_answer(client, prepared):
    base = str(client.make_url("")).rstrip("/")
    failures = await asyncio.to_thread(_fuzz, base, prepared.key)
    assert not failures, "\n\n".join(failures)


def _real_resources(base: str, key: str, csv: bytes) -> None:
    schema = _load(base)

    def call(method, path, status, **case):
        response = _call(schema, base, key, method, path, **case)
        assert response.status_code == status, response.text
        return response

    call("GET", "/api/openapi.json", 200)
    new = call("POST", "/api/keys", 201, body={"name": "doomed", "scope": "read"}).json()
    call("GET", "/api/keys", 200)
    call("DELETE", "/api/keys/{id}", 200, path_parameters={"id": new["id"]})
    call("GET", "/api/families", 200)

    (conn,) = call("GET", "/api/connections", 200).json()["items"]
    assert call("GET", "/api/usage", 200).json()["items"]
    call("GET", "/api/usage", 200, query={"format": "csv"})
    call("DELETE", "/api/connections/{id}", 200, path_parameters={"id": conn["id"]})

    # Two models of one version each: a version deleted by its id, a model by its model_id.
    first, second = call("GET", "/api/models", 200).json()["items"]
    call("DELETE", "/api/models/{id}", 200, path_parameters={"id": first["id"]})
    call("DELETE", "/api/models/{id}", 200, path_parameters={"id": second["model_id"]})

    # A real job in a worker process, cancelled at once: its answers, not its training, count.
    job = call("POST", "/api/models", 202, media_type="multipart/form-data", body={
        "data": csv, "strat": "conformance", "model": "DecisionTree", "type": "class",
        "target": "direction", "window": 2, "features": "point1,point2"}).json()
    call("GET", "/api/jobs/{id}", 200, path_parameters={"id": job["id"]})
    call("DELETE", "/api/jobs/{id}", 200, path_parameters={"id": job["id"]})


async def test_answers_about_real_resources_match_the_document(client, prepared):
    ws = await authed(client, prepared.key)  # a live connection, with usage to report
    await ask(ws, request())
    base = str(client.make_url("")).rstrip("/")
    await asyncio.to_thread(_real_resources, base, prepared.key, prepared.data.read_bytes())
