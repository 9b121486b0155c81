"""The REST API under /api/ in-process: every route, its errors, account isolation.

The in-process twin of tests/e2e/test_rest_api.py: the same statuses, JSON shapes and messages,
and the effects checked through another route or the websocket. Training through
``POST /api/models`` runs in a spawned worker process, as in a real server; one test does it.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from decimal import Decimal

import aiohttp
import pytest

from nember_core.app.nember import Nember
from nember_core.app.server import create_app
from tests.harness import expected_families, warmup_prices, write_config, write_prices
from tests.helpers import request, training_form

from .conftest import ask, authed

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")
NOT_FOUND = "Model configuration not found in the backend."
NO_HEADER = "Authenticate with the header 'Authorization: Bearer <API key>'."
KEY_FIELDS = {"id", "name", "prefix", "scope", "created_at", "revoked_at", "live_connections"}
MODEL_FIELDS = {"id", "model_id", "strat", "model", "type", "version", "latest", "features",
                "window", "target", "classes", "params", "metrics", "samples", "family_version",
                "trained_at", "training_seconds", "evaluation", "warnings", "request_example"}
JOB_FIELDS = {"id", "state", "progress", "stage", "error", "model_id", "version", "strat",
              "model", "type", "created_at", "finished_at"}
CONNECTION_FIELDS = {"id", "key_id", "key_name", "remote", "node", "opened_at", "predictions",
                     "errors", "last_request_at"}
USAGE_FIELDS = {"connection_id", "key_id", "remote", "opened_at", "closed_at", "close_code",
                "close_reason", "live", "predictions", "errors", "amount", "currency"}
CSV_COLUMNS = ["connection_id", "key_id", "remote", "opened_at", "closed_at", "close_code",
               "close_reason", "predictions", "errors", "amount", "currency"]
ROUTES = [("GET", "/keys"), ("POST", "/keys"), ("DELETE", "/keys/x"), ("GET", "/models"),
          ("POST", "/models"), ("DELETE", "/models/x"), ("GET", "/jobs/x"),
          ("GET", "/families"), ("GET", "/connections"), ("DELETE", "/connections/x"),
          ("GET", "/usage")]


class Api:
    """``client`` with an account's API key: ``call`` answers (status, JSON or text)."""

    def __init__(self, client, prepared):
        self.client = client
        self.prepared = prepared
        self.key = prepared.key
        self.other_key = prepared.other_key

    async def call(self, method: str, path: str, key: str | None = None, **kwargs):
        headers = {"Authorization": f"Bearer {key or self.key}", **kwargs.pop("headers", {})}
        async with self.client.request(method, "/api" + path, headers=headers,
                                       **kwargs) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.text()

    async def items(self, path: str, key: str | None = None) -> list[dict]:
        status, body = await self.call("GET", path, key)
        assert status == 200, body
        assert set(body) == {"items"}
        return body["items"]

    async def default_key_id(self, secret: str | None = None) -> str:
        secret = secret or self.key
        (found,) = [k["id"] for k in await self.items("/keys", secret)
                    if secret.startswith(k["prefix"]) and k["name"] == "default"]
        return found

    def form(self, csv_bytes: bytes | None = None, **fields) -> aiohttp.FormData:
        return training_form(self.prepared.data.read_bytes() if csv_bytes is None else csv_bytes,
                             **fields)

    async def finished(self, job: dict, timeout: float = 60.0) -> tuple[dict, list[float]]:
        """Follow a job on /api/jobs/{id} until it ends; the job and the progress seen."""
        seen = []
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            status, job = await self.call("GET", f"/jobs/{job['id']}")
            assert status == 200, job
            assert set(job) == JOB_FIELDS
            seen.append(job["progress"])
            if job["state"] in ("succeeded", "failed"):
                return job, seen
            assert job["state"] in ("queued", "running")
            assert asyncio.get_running_loop().time() < deadline, f"job did not finish: {job}"
            await asyncio.sleep(0.05)


@pytest.fixture
def api(client, prepared) -> Api:
    return Api(client, prepared)


async def eventually(probe, timeout: float = 10.0, what: str = "the condition"):
    """Await ``probe()`` until it returns something truthy, and return that."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = await probe()
        if found:
            return found
        assert asyncio.get_running_loop().time() < deadline, f"no {what} within {timeout}s"
        await asyncio.sleep(0.02)


async def answer_until(ws, frame, wanted, timeout: float = 10.0) -> dict:
    """Ask ``frame`` until the answer satisfies ``wanted``; that answer."""
    async def probe():
        answer = await ask(ws, frame)
        return answer if wanted(answer) else None
    return await eventually(probe, timeout, "matching answer")


async def closed_with(ws) -> int:
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE, msg
    return msg.data


# --- authentication, routing ------------------------------------------------------------

@pytest.mark.parametrize("headers,message", [
    ({}, NO_HEADER),
    ({"Authorization": "Basic abc"}, NO_HEADER),
    ({"Authorization": "Bearer "}, NO_HEADER),
    ({"Authorization": "Bearer nmb_nope"}, "Invalid API key."),
], ids=["none", "basic", "empty-bearer", "unknown-key"])
async def test_every_route_needs_a_valid_key(client, headers, message):
    for method, path in ROUTES:
        async with client.request(method, "/api" + path, headers=headers) as response:
            assert response.status == 401, (method, path)
            assert await response.json() == {"error": message}, (method, path)


async def test_a_revoked_key_cannot_call_the_api(api, services):
    owner = await services.accounts.by_email("trader@example.com")
    doomed = await services.keys.create(owner.id, "api-revoked", "read")
    assert (await api.call("GET", "/keys", doomed.secret))[0] == 200
    await services.keys.revoke(doomed.key.id)  # as the CLI does
    assert await api.call("GET", "/keys", doomed.secret) == (401, {"error": "Invalid API key."})


async def test_unknown_route_and_method_are_json_errors(api):
    assert await api.call("GET", "/nothing") == (404, {"error": "No such API route."})
    assert await api.call("PUT", "/keys") == (405, {"error": "Method PUT is not allowed here."})
    assert await api.call("PATCH", "/models/x") == (
        405, {"error": "Method PATCH is not allowed here."})
    async with api.client.put("/api/keys", headers={"Authorization": f"Bearer {api.key}"}) as r:
        assert set(r.headers["Allow"].split(", ")) == {"GET", "POST", "HEAD"}


async def test_usage_format_must_be_json_or_csv(api):
    assert await api.call("GET", "/usage", params={"format": "xml"}) == (
        400, {"error": "'format' must be 'json' or 'csv'."})
    assert (await api.call("GET", "/usage", params={"format": "json"}))[0] == 200


async def test_openapi_document_matches_the_real_routes(client):
    async with client.get("/api/openapi.json") as response:  # no key needed
        assert response.status == 200
        document = await response.json()
    assert document["openapi"].startswith("3.1")
    documented = {(method.upper(), path) for path, ops in document["paths"].items()
                  for method in ops}
    real = {(route.method, route.resource.canonical) for route in client.app.router.routes()
            if route.resource is not None and route.resource.canonical.startswith("/api/")
            and route.method != "HEAD"}
    assert documented == real
    for ops in document["paths"].values():
        for op in ops.values():
            assert op["summary"]
            assert {"200", "201", "202"} & set(op["responses"])


# --- keys -------------------------------------------------------------------------------

async def test_keys_create_list_revoke(api):
    before = await api.items("/keys")
    status, new = await api.call("POST", "/keys", json={"name": "  from-api  ",
                                                         "scope": "read"})
    assert status == 201
    assert set(new) == KEY_FIELDS | {"key"} and new["scope"] == "read"
    assert new["key"].startswith("nmb_") and new["key"].startswith(new["prefix"])
    assert new["id"].startswith("key_") and new["id"] not in {k["id"] for k in before}
    assert (new["name"], new["revoked_at"], new["live_connections"]) == ("from-api", None, 0)
    assert TIME.match(new["created_at"])
    listed = await api.items("/keys")
    assert [k["id"] for k in listed] == [k["id"] for k in before] + [new["id"]]  # oldest first
    assert listed[-1] == {k: v for k, v in new.items() if k != "key"}  # the secret never again
    assert (await api.call("GET", "/keys", new["key"]))[0] == 200  # the new key works

    status, revoked = await api.call("DELETE", f"/keys/{new['id']}")
    assert status == 200
    assert set(revoked) == KEY_FIELDS | {"already_revoked"} and TIME.match(revoked["revoked_at"])
    assert revoked["already_revoked"] is False
    assert {k: revoked[k] for k in ("id", "name", "prefix", "created_at")} == {
        k: new[k] for k in ("id", "name", "prefix", "created_at")}
    assert await api.call("GET", "/keys", new["key"]) == (401, {"error": "Invalid API key."})
    (after,) = [k for k in await api.items("/keys") if k["id"] == new["id"]]
    assert after["revoked_at"] == revoked["revoked_at"]
    # Revoking again changes nothing, and says so.
    assert await api.call("DELETE", f"/keys/{new['id']}") == (
        200, {**revoked, "already_revoked": True})


async def test_a_key_without_a_name_is_called_default(api):
    status, new = await api.call("POST", "/keys", json={})
    assert status == 201 and new["name"] == "default"


@pytest.mark.parametrize("body,status,message", [
    ({"name": ""}, 422, "A key name must have 1 to 200 characters."),
    ({"name": "   "}, 422, "A key name must have 1 to 200 characters."),
    ({"name": 5}, 422, "A key name must have 1 to 200 characters."),
    ({"name": "x" * 201}, 422, "A key name must have 1 to 200 characters."),
    ([1], 400, "The request body must be a JSON object."),
    ("no", 400, "The request body must be a JSON object."),
    ("", 400, "The request body must be a JSON object."),
], ids=["empty", "blank", "number", "long", "list", "not-json", "no-body"])
async def test_keys_create_rejects_bad_bodies(api, body, status, message):
    before = await api.items("/keys")
    kwargs = {"data": body} if isinstance(body, str) else {"json": body}
    assert await api.call("POST", "/keys", **kwargs) == (status, {"error": message})
    assert await api.items("/keys") == before  # nothing created


async def test_a_body_over_the_request_limit_is_413(api):
    huge = json.dumps({"name": "x" * (2 * 1024 * 1024)})  # over aiohttp's 1 MiB
    assert await api.call("POST", "/keys", data=huge,
                          headers={"Content-Type": "application/json"}) == (
        413, {"error": "The request body is too large."})


async def test_revoking_a_key_over_the_api_closes_its_sockets_with_4401(api, client):
    status, new = await api.call("POST", "/keys", json={"name": "live"})
    assert status == 201
    first, second = await authed(client, new["key"]), await authed(client, new["key"])
    other_ws = await authed(client, api.key)  # another key of the account stays open
    (listed,) = [k for k in await api.items("/keys") if k["id"] == new["id"]]
    assert listed["live_connections"] == 2
    assert (await api.call("DELETE", f"/keys/{new['id']}"))[0] == 200
    assert await closed_with(first) == 4401
    assert await closed_with(second) == 4401
    assert (await ask(other_ws, request()))["type"] == "success"

    async def none_live():
        keys = {k["id"]: k for k in await api.items("/keys")}
        return keys[new["id"]]["live_connections"] == 0
    await eventually(none_live, what="revoked key without live connections")
    ws = await client.ws_connect("/ws")  # and the key is refused from now on
    await ws.send_str(new["key"])
    assert json.loads(await ws.receive_str(timeout=5)) == {
        "status": "error", "message": "Invalid API key."}
    assert await closed_with(ws) == 1008


async def test_revoking_an_unknown_key_is_404(api):
    assert await api.call("DELETE", "/keys/key_nope") == (404, {"error": "No API key key_nope."})


async def test_the_api_revokes_by_id_not_by_the_key_itself(api, services):
    owner = await services.accounts.by_email("trader@example.com")
    kept = await services.keys.create(owner.id, "by-secret", "read")
    status, body = await api.call("DELETE", f"/keys/{kept.secret}")
    assert status == 404 and body["error"].startswith("No API key ")
    assert (await api.call("GET", "/keys", kept.secret))[0] == 200  # still valid


# --- models and jobs --------------------------------------------------------------------

async def test_models_list_every_version_with_its_details(api, client):
    models = await api.items("/models")
    assert [(m["strat"], m["model"], m["type"], m["version"], m["latest"]) for m in models] == [
        ("example_strategy", "DecisionTree", "class", 1, True),
        ("example_strategy", "DecisionTree", "reg", 1, True),
    ]
    cls, reg = models
    assert set(cls) == MODEL_FIELDS and set(reg) == MODEL_FIELDS
    assert cls["id"] == cls["model_id"] + "-v1" and cls["model_id"].startswith("mdl_")
    assert cls["model_id"] != reg["model_id"]
    assert (cls["features"], cls["window"], cls["target"]) == (["point1", "point2"], 2,
                                                               "direction")
    assert cls["classes"] == ["down", "up"] and reg["classes"] is None
    assert cls["params"] == {} and cls["samples"] == 299  # 300 rows, window 2
    assert 0 <= cls["metrics"]["accuracy"] <= 1 and {"mae", "rmse", "r2"} <= set(reg["metrics"])
    assert cls["family_version"].startswith("scikit-learn ")
    assert TIME.match(cls["trained_at"]) and cls["training_seconds"] >= 0
    assert cls["request_example"] == {
        "strat_name": "example_strategy", "model_name": "DecisionTree", "model_type": "class",
        "DataPoints": [{"point1": 0.0, "point2": 0.0}, {"point1": 0.0, "point2": 0.0}],
    }
    ws = await authed(client, api.key)  # the example is a request the socket answers
    answer = await ask(ws, cls["request_example"])
    assert answer["type"] == "success" and answer["prediction"] in ("up", "down")


async def test_train_follow_serve_retrain_and_delete_versions_then_the_model(
    api, client, tmp_path
):
    small = write_prices(tmp_path / "small.csv", rows=60).read_bytes()
    wanted = request(strat_name="rest", model_type="reg")
    ws = await authed(client, api.key)
    other_ws = await authed(client, api.other_key)
    assert (await ask(ws, wanted))["message"] == NOT_FOUND

    status, job = await api.call("POST", "/models", data=api.form(
        small, strat="rest", type="reg", target="move"))
    assert status == 202 and set(job) == JOB_FIELDS
    assert job["id"].startswith("job_") and job["state"] in ("queued", "running")
    assert (job["strat"], job["model"], job["type"]) == ("rest", "DecisionTree", "reg")
    assert (job["error"], job["model_id"], job["version"], job["finished_at"]) == (
        None, None, None, None)
    assert TIME.match(job["created_at"])
    done, seen = await api.finished(job)
    assert done["state"] == "succeeded", done
    assert (done["progress"], done["stage"], done["error"], done["version"]) == (
        1.0, "trained", None, 1)
    assert seen == sorted(seen) and all(0 <= p <= 1 for p in seen)
    assert TIME.match(done["finished_at"]) and done["created_at"] == job["created_at"]
    (v1,) = [m for m in await api.items("/models") if m["strat"] == "rest"]
    assert v1["id"] == done["model_id"] and v1["id"] == v1["model_id"] + "-v1"
    assert (v1["model"], v1["type"], v1["version"], v1["latest"]) == ("DecisionTree", "reg",
                                                                      1, True)
    assert (v1["features"], v1["window"], v1["target"], v1["samples"]) == (
        ["point1", "point2"], 2, "move", 59)
    assert {"mae", "rmse", "r2"} <= set(v1["metrics"])

    # Served on the websocket, as a new model; other accounts neither see it nor touch it.
    served = await answer_until(ws, wanted, lambda a: a["type"] == "success")
    assert served["message"] == "New model configuration added, prediction made"
    assert isinstance(served["prediction"], float)
    assert await api.call("GET", f"/jobs/{job['id']}", api.other_key) == (
        404, {"error": f"No training job {job['id']}."})
    assert v1["model_id"] not in {m["model_id"] for m in await api.items("/models",
                                                                          api.other_key)}
    for doomed in (v1["id"], v1["model_id"]):
        assert await api.call("DELETE", f"/models/{doomed}", api.other_key) == (
            404, {"error": f"No model {doomed}."})
    assert (await ask(other_ws, wanted))["message"] == NOT_FOUND

    # Training again makes version 2, which serves; a failing fit is a failed job.
    done, _ = await api.finished((await api.call("POST", "/models", data=api.form(
        small, strat="rest", type="reg", target="move", params='{"max_depth": 3}')))[1])
    assert (done["state"], done["version"], done["model_id"]) == (
        "succeeded", 2, v1["model_id"] + "-v2")
    failed, _ = await api.finished((await api.call("POST", "/models", data=api.form(
        small, strat="rest", type="reg", target="move", params='{"min_samples_split": 1}')))[1])
    assert failed["state"] == "failed"
    assert failed["error"].startswith("DecisionTree could not be trained: ")
    assert (failed["model_id"], failed["version"]) == (None, None)
    versions = [m for m in await api.items("/models") if m["strat"] == "rest"]
    assert [(m["id"], m["version"], m["latest"], m["params"]) for m in versions] == [
        (v1["model_id"] + "-v2", 2, True, {"max_depth": 3}), (v1["id"], 1, False, {})]
    retrained = await answer_until(ws, wanted, lambda a: a["message"].startswith("New"))
    assert retrained["type"] == "success"

    # Deleting the newest version leaves version 1, the latest again, and serving again.
    status, deleted = await api.call("DELETE", f"/models/{v1['model_id']}-v2")
    assert (status, deleted) == (200, {"deleted": [v1["model_id"] + "-v2"]})
    assert [(m["version"], m["latest"]) for m in await api.items("/models")
            if m["strat"] == "rest"] == [(1, True)]
    await answer_until(ws, wanted, lambda a: a.get("prediction") == served["prediction"])
    # Deleting the model deletes every version; the socket stops finding it.
    status, deleted = await api.call("DELETE", f"/models/{v1['model_id']}")
    assert (status, deleted) == (200, {"deleted": [v1["id"]]})
    assert not [m for m in await api.items("/models") if m["strat"] == "rest"]
    gone = await answer_until(ws, wanted, lambda a: a["type"] == "error")
    assert gone["message"] == NOT_FOUND
    assert await api.call("DELETE", f"/models/{v1['model_id']}") == (
        404, {"error": f"No model {v1['model_id']}."})
    assert len(await api.items("/models")) == 2  # the prepared ones, untouched


@pytest.mark.parametrize("fields,message", [
    ({"model": "Nope"}, "No installed model family 'Nope' (installed: DecisionTree, "),
    ({"type": "both"}, "The model type must be 'class' or 'reg', not 'both'."),
    ({"target": None}, "The form field 'target' is required."),
    ({"strat": ""}, "The form field 'strat' is required."),
    ({"strat": "x" * 201}, "A strategy name must have 1 to 200 characters."),
    ({"window": "two"}, "'window' must be a whole number."),
    ({"window": "0"}, "The window must be a whole number from 1 to 1000, not 0."),
    ({"features": ","}, "Name at least one feature column."),
    ({"features": "point1,nope"}, "The CSV: no column named 'nope' (columns: point1, point2, "
                                  "direction, move)."),
    ({"target": "nope"}, "The CSV: no column named 'nope'"),
    ({"features": "point1,direction"}, "The CSV: the target 'direction' cannot also be a "
                                       "feature."),
    ({"params": "[1]"}, "'params' must be a JSON object of hyperparameters."),
    ({"params": "{"}, "'params' must be a JSON object of hyperparameters."),
    ({"colour": "blue"}, "Unknown form field 'colour'; expected 'data' and 'strat', "),
    ({"skip_warmup": "yes"}, "'skip_warmup' must be true or false."),
    ({"folds": "many"}, "'folds' and 'horizon' must be whole numbers."),
    ({"folds": "0"}, "The number of folds must be a whole number from 1 to 20, not 0."),
    ({"horizon": "-1"}, "The horizon must be a whole number from 0 to 10000, not -1."),
    ({"bars_per_year": "0"}, "Bars per year must be a number above 0"),
    ({"returns": "nope"}, "The CSV: no column named 'nope'"),
    ({"returns": "point1"}, "The CSV: the returns column 'point1' cannot be a feature"),
])
async def test_training_request_errors_are_422(api, prepared, fields, message):
    status, answer = await api.call("POST", "/models", data=api.form(**fields))
    assert status == 422 and set(answer) == {"error"}
    assert answer["error"].startswith(message), answer
    uploads = Nember.load(str(prepared.config)).config.data_dir / "uploads"
    assert not list(uploads.glob("*.csv"))  # the upload is not left behind


async def test_what_only_the_whole_csv_shows_is_a_failed_job_with_the_reason(api):
    """The server reads an upload's header only; a training worker reads the rest."""
    for form, reason in [
        (api.form(b"a,b\n1\n", target="a", features=None),
         "the CSV: line 2 has 1 values, the header has 2"),
        (api.form(features="direction", target="move"),
         "the CSV: feature 'direction' is not numeric (line 2: "),
        (api.form(warmup_prices().encode(), features="point1,sma3"),
         "the CSV: feature 'sma3' is empty on its first 2 rows (warm-up rows of an "
         "indicator?): skip the warm-up rows (the CLI's --skip-warmup, the REST API's "
         "skip_warmup=true)"),
    ]:
        status, job = await api.call("POST", "/models", data=form)
        assert status == 202, job
        job, _ = await api.finished(job)
        assert job["state"] == "failed" and job["error"].startswith(reason), job
        assert job["model_id"] is None


async def test_the_warm_up_rows_are_skipped_when_asked(api):
    form = api.form(warmup_prices().encode(), strat="warm", features="point1,sma3",
                    skip_warmup="true")
    status, job = await api.call("POST", "/models", data=form)
    assert status == 202, job
    job, _ = await api.finished(job)
    assert job["state"] == "succeeded", job
    (model,) = [m for m in await api.items("/models") if m["strat"] == "warm"]
    assert (model["samples"], model["metrics"]["warmup_rows_skipped"]) == (77, 2)


async def test_a_model_carries_its_walk_forward_evaluation_backtest_and_warnings(api):
    rows = api.prepared.data.read_text().splitlines()
    # "ret": each row's next-bar return, whose sign is the row's direction (move's, scaled).
    csv = "\n".join([rows[0] + ",ret"] + [f"{row},{float(row.split(',')[3]) / 100:.6f}"
                                          for row in rows[1:]]) + "\n"
    form = api.form(csv.encode(), strat="evaluated", features="point1,move", folds="4",
                    horizon="2", returns="ret", bars_per_year="8760")
    status, job = await api.call("POST", "/models", data=form)
    assert status == 202, job
    job, _ = await api.finished(job)
    assert job["state"] == "succeeded", job
    (model,) = [m for m in await api.items("/models") if m["strat"] == "evaluated"]
    evaluation = model["evaluation"]
    assert (evaluation["method"], evaluation["horizon"], evaluation["purge"]) == (
        "walk-forward", 2, 3)
    assert [fold["fold"] for fold in evaluation["folds"]] == [1, 2, 3, 4]
    for fold in evaluation["folds"]:
        assert fold["train"][1] + 3 == fold["test"][0]  # the purge gap
        assert set(fold["backtest"]) == {"return", "sharpe", "max_drawdown", "trades", "bars",
                                         "buy_and_hold_return"}
    assert model["metrics"] == evaluation["metrics"]
    assert set(evaluation["metrics"]) == {"accuracy", "balanced_accuracy", "log_loss"}
    assert [level["coverage"] for level in evaluation["coverage"]] == [0.1, 0.25, 0.5, 1.0]
    assert sum(row["predictions"] for row in evaluation["calibration"]) == evaluation["tested"]
    pooled = evaluation["backtest"]
    assert pooled["strategy"]["bars"] == pooled["buy_and_hold"]["bars"] == evaluation["tested"]
    assert len(pooled["equity"]["strategy"]) == len(pooled["equity"]["buy_and_hold"]) > 10
    # move gives the answer away: trained, as asked, and said twice over.
    assert model["warnings"][0].startswith("feature 'move' predicts the target on its own")
    assert model["warnings"][1].startswith("out-of-sample balanced accuracy 1.00 is too good")


async def test_a_bad_or_missing_csv_is_422_and_json_is_400(api):
    assert await api.call("POST", "/models", data=api.form(b"point1,direction\n")) == (
        422, {"error": "The CSV: needs a header row and at least one data row."})
    no_file = aiohttp.FormData({"strat": "x", "model": "DecisionTree", "type": "class",
                                "target": "direction"})
    no_file.add_field("window", "1", content_type="text/plain")  # multipart, without 'data'
    assert await api.call("POST", "/models", data=no_file) == (
        422, {"error": "The CSV file is missing: send it as the form field 'data'."})
    status, answer = await api.call("POST", "/models", json={"strat": "x"})
    assert status == 400 and answer == {"error": "Send the training request as "
                                                 "multipart/form-data with the CSV as 'data'."}
    assert not [m for m in await api.items("/models") if m["strat"] in ("api", "x")]


MULTIPART = "multipart/form-data; boundary=b"


@pytest.mark.parametrize("path,content_type,body", [
    ("/models", "multipart/form-data; boundary=xyz", b"not multipart"),
    ("/models", "multipart/form-data", b"not multipart"),
    ("/models", MULTIPART, b'--b\r\nContent-Disposition: form-data; name="strat"\r\n\r\n'
                           b'\xff\xfe\r\n--b--\r\n'),
    ("/models", MULTIPART, b'--b\r\nContent-Type: multipart/mixed; boundary=c\r\n'
                           b'Content-Disposition: form-data; name="data"\r\n\r\n'
                           b'--c\r\n\r\nx\r\n--c--\r\n--b--\r\n'),
    # A control character in a part's header: aiohttp's InvalidHeader (schemathesis found it).
    ("/models", MULTIPART, b'--b\r\nContent-Disposition: form-data; name="a\x1eb"\r\n\r\n'
                           b'x\r\n--b--\r\n'),
    ("/keys", "application/json", b"[" * 100_000),
], ids=["no-start-boundary", "no-boundary", "field-not-utf8", "nested-multipart",
        "part-header-control-char", "deep-json"])
async def test_a_malformed_body_is_a_client_error(api, path, content_type, body):
    status, answer = await api.call("POST", path, data=body,
                                    headers={"Content-Type": content_type})
    assert status in (400, 422) and set(answer) == {"error"}, (status, answer)


async def test_an_upload_over_the_limit_is_413(aiohttp_client, api, prepared, tmp_path):
    data_dir = Nember.load(str(prepared.config)).config.data_dir
    config = write_config(tmp_path, server={"max_upload_size": 2048}, data_dir=data_dir)
    small_limit = await aiohttp_client(create_app(Nember.load(str(config))))
    limited = Api(small_limit, prepared)
    assert prepared.data.stat().st_size > 2048
    assert await limited.call("POST", "/models", data=limited.form()) == (
        413, {"error": "The CSV is larger than the limit of 2048 bytes."})
    # Under the limit, the CSV is read (and here refused for what it holds, not its size).
    assert (await limited.call("POST", "/models", data=limited.form(b"a,b\n1\n")))[0] == 422
    assert not list((data_dir / "uploads").glob("*.csv"))
    assert not [m for m in await api.items("/models") if m["strat"] == "api"]
    # The other server, with the default limit, takes the same CSV's errors as usual.
    assert (await api.call("POST", "/models", data=api.form(target="nope")))[0] == 422


async def test_unknown_job_is_404(api):
    assert await api.call("GET", "/jobs/job_nope") == (
        404, {"error": "No training job job_nope."})


async def test_deleting_an_unknown_model_is_404(api):
    assert await api.call("DELETE", "/models/mdl_nope") == (404, {"error": "No model mdl_nope."})
    assert await api.call("DELETE", "/models/mdl_nope-v1") == (
        404, {"error": "No model mdl_nope-v1."})


# --- families ---------------------------------------------------------------------------

async def test_families_lists_every_installed_family(api):
    families = await api.items("/families")
    names = [f["name"] for f in families]
    assert names == sorted(names)
    assert expected_families() <= set(names)
    assert all(set(f) == {"name", "library_version", "trainable"} and f["library_version"]
               for f in families)
    untrainable = {f["name"] for f in families if not f["trainable"]}
    assert untrainable == ({"ONNX"} & set(names))  # imported, never trained


# --- connections ------------------------------------------------------------------------

async def test_connections_listed_and_closed_with_4000(api, client):
    ws = await authed(client, api.key)
    await ask(ws, request())
    await ask(ws, "junk")
    (conn,) = await api.items("/connections")
    assert set(conn) == CONNECTION_FIELDS
    assert conn["id"].startswith("conn_") and conn["key_id"] == await api.default_key_id()
    assert (conn["key_name"], conn["remote"], conn["predictions"], conn["errors"]) == (
        "default", "127.0.0.1", 1, 1)
    assert conn["node"] and TIME.match(conn["opened_at"])
    assert TIME.match(conn["last_request_at"]) and conn["last_request_at"] >= conn["opened_at"]

    status, closed = await api.call("DELETE", f"/connections/{conn['id']}")
    assert (status, closed) == (200, {"id": conn["id"], "closed": True})
    assert await closed_with(ws) == 4000

    async def ended():
        rows = {r["connection_id"]: r for r in (await api.call("GET", "/usage"))[1]["items"]}
        # Unlisted first (its place under the limit), then its usage recorded.
        return rows[conn["id"]] if rows[conn["id"]]["closed_at"] else None
    row = await eventually(ended, what="connection recorded as closed")
    assert (row["close_code"], row["close_reason"]) == (4000, "closed by owner")
    assert (row["predictions"], row["errors"]) == (1, 1)
    assert await api.items("/connections") == []
    assert await api.call("DELETE", f"/connections/{conn['id']}") == (
        404, {"error": f"No live connection {conn['id']}."})


# --- usage ------------------------------------------------------------------------------

async def test_usage_has_charges_per_connection_and_day_with_totals(api, client):
    ws = await authed(client, api.key)
    for _ in range(3):
        await ask(ws, request())
    await ask(ws, request(strat_name="nope"))
    status, usage = await api.call("GET", "/usage")
    assert status == 200 and set(usage) == {"currency", "items", "days", "totals"}
    (live,) = [row for row in usage["items"] if row["live"]]  # live counters, not yet closed
    assert set(live) == USAGE_FIELDS
    assert (live["predictions"], live["errors"], live["closed_at"], live["close_code"]) == (
        3, 1, None, None)
    assert live["key_id"] == await api.default_key_id()
    await ws.close()

    async def closed():
        status, usage = await api.call("GET", "/usage")
        (row,) = [r for r in usage["items"] if r["connection_id"] == live["connection_id"]]
        return usage if row["closed_at"] else None
    usage = await eventually(closed, what="usage of the closed connection")
    rows = usage["items"]
    (mine,) = [row for row in rows if row["connection_id"] == live["connection_id"]]
    assert (mine["predictions"], mine["errors"], mine["close_code"]) == (3, 1, 1000)
    assert mine["close_reason"] == "closed by client"
    assert TIME.match(mine["opened_at"]) and TIME.match(mine["closed_at"])
    assert usage["currency"] == "USD"
    assert all(row["amount"] == "0.01" and row["currency"] == "USD" for row in rows)
    assert usage["totals"] == {
        "connections": len(rows), "predictions": sum(r["predictions"] for r in rows),
        "errors": sum(r["errors"] for r in rows),
        "amount": str(sum(Decimal(r["amount"]) for r in rows)),
    }
    days = {day.pop("day"): day for day in usage["days"]}
    assert mine["opened_at"][:10] in days
    assert {name: sum(day[name] for day in days.values()) for name in
            ("connections", "predictions", "errors")} == {
        name: usage["totals"][name] for name in ("connections", "predictions", "errors")}
    assert str(sum(Decimal(day["amount"]) for day in days.values())) == (
        usage["totals"]["amount"])

    async with client.get("/api/usage", params={"format": "csv"},
                          headers={"Authorization": f"Bearer {api.key}"}) as response:
        assert response.status == 200 and response.content_type == "text/csv"
        assert response.headers["Content-Disposition"] == (
            'attachment; filename="nember-usage.csv"')
        text = await response.text()
    reader = csv.DictReader(io.StringIO(text))
    exported = list(reader)
    assert reader.fieldnames == CSV_COLUMNS
    assert [r["connection_id"] for r in exported] == [r["connection_id"] for r in rows]
    (line,) = [r for r in exported if r["connection_id"] == live["connection_id"]]
    assert line == {column: "" if mine[column] is None else str(mine[column])
                    for column in CSV_COLUMNS}


# --- isolation --------------------------------------------------------------------------

async def test_one_account_never_sees_or_touches_anothers_resources(api, client, services):
    other = api.other_key
    ws = await authed(client, api.key)
    (conn,) = await api.items("/connections")
    ours = await api.items("/keys")
    key_id = await api.default_key_id()
    models = await api.items("/models")
    their_ws = await authed(client, other)  # the other account's own connection
    (their_conn,) = await api.items("/connections", other)
    assert their_conn["key_id"] == await api.default_key_id(other) != key_id
    # Listings of the other account contain nothing of ours, and ours nothing of theirs.
    assert not {k["id"] for k in ours} & {k["id"] for k in await api.items("/keys", other)}
    assert await api.items("/models", other) == []
    assert [c["id"] for c in await api.items("/connections")] == [conn["id"]]
    our_usage = {row["connection_id"] for row in (await api.call("GET", "/usage"))[1]["items"]}
    their_usage = {row["connection_id"]
                   for row in (await api.call("GET", "/usage", other))[1]["items"]}
    assert conn["id"] in our_usage and their_conn["id"] in their_usage
    assert not our_usage & their_usage
    # Nor can it act on ours: every attempt is a 404, and nothing changes.
    assert await api.call("DELETE", f"/keys/{key_id}", other) == (
        404, {"error": f"No API key {key_id}."})
    for model in models:
        for doomed in (model["id"], model["model_id"]):
            assert await api.call("DELETE", f"/models/{doomed}", other) == (
                404, {"error": f"No model {doomed}."})
    assert await api.call("DELETE", f"/connections/{conn['id']}", other) == (
        404, {"error": f"No live connection {conn['id']}."})
    assert await api.items("/keys") == ours
    assert await api.items("/models") == models
    assert [c["id"] for c in await api.items("/connections")] == [conn["id"]]
    assert (await ask(ws, request()))["type"] == "success"  # still open, and ours serve
    # And its websocket cannot use our models.
    assert (await ask(their_ws, request()))["message"] == NOT_FOUND
    owner = await services.accounts.by_email("trader@example.com")
    assert {k.key.id for k in await services.keys.list(owner.id)} == {k["id"] for k in ours}
