"""The REST API under /api/, over a real server: every route, its errors, account isolation."""

from __future__ import annotations

import asyncio
import csv
import io
import re

import aiohttp
import pytest

from tests.harness import Server, run_cli
from tests.helpers import ask, authed, request, training_form

pytestmark = pytest.mark.e2e  # real nember processes: `pytest -m e2e`

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")


@pytest.fixture(scope="module")
def api(trained, module_servers):
    """The trained workspace's server, plus a second account (the 'other' tenant)."""
    run_cli(trained.config, "accounts", "create", "other@example.com")
    other = run_cli(trained.config, "keys", "create", "--account", "other@example.com",
                    "--scope", "manage")
    return Api(module_servers(trained.config), trained, other.stdout.strip().splitlines()[-1])


class Api:
    def __init__(self, server: Server, workspace, other_key: str):
        self.server = server
        self.workspace = workspace
        self.key = workspace.key
        self.other_key = other_key
        self.base = f"http://127.0.0.1:{server.port}/api"

    def auth(self, key: str | None = None) -> dict:
        return {"Authorization": f"Bearer {key or self.key}"}

    async def call(self, method: str, path: str, key: str | None = None, **kwargs):
        async with aiohttp.ClientSession() as session:
            async with session.request(
                method, self.base + path, headers=self.auth(key), **kwargs
            ) as response:
                if response.content_type == "application/json":
                    return response.status, await response.json()
                return response.status, await response.text()

    def form(self, csv_bytes: bytes | None = None, **fields) -> aiohttp.FormData:
        return training_form(self.workspace.data.read_bytes() if csv_bytes is None else csv_bytes,
                             **fields)

    async def train(self, **fields) -> dict:
        status, job = await self.call("POST", "/models", data=self.form(**fields))
        assert status == 202, job
        for _ in range(300):
            status, job = await self.call("GET", f"/jobs/{job['id']}")
            assert status == 200
            if job["state"] in ("succeeded", "failed"):
                return job
            await asyncio.sleep(0.1)
        raise AssertionError(f"job did not finish: {job}")


# --- authentication ---------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic abc"},
                                     {"Authorization": "Bearer nmb_nope"},
                                     {"Authorization": "Bearer "}])
async def test_every_route_needs_a_valid_key(api, headers):
    async with aiohttp.ClientSession() as session:
        for method, path in [("GET", "/keys"), ("POST", "/keys"), ("DELETE", "/keys/x"),
                             ("GET", "/models"), ("POST", "/models"), ("DELETE", "/models/x"),
                             ("GET", "/jobs/x"), ("GET", "/connections"),
                             ("DELETE", "/connections/x"), ("GET", "/usage")]:
            async with session.request(method, api.base + path, headers=headers) as response:
                assert response.status == 401, (method, path)
                body = await response.json()
                assert set(body) == {"error"} and body["error"]


async def test_a_revoked_key_cannot_call_the_api(api):
    key = api.workspace.new_key("api-revoked", scope="read")
    assert (await api.call("GET", "/keys", key))[0] == 200
    run_cli(api.workspace.config, "keys", "revoke", key)
    assert await api.call("GET", "/keys", key) == (401, {"error": "Invalid API key."})


async def test_unknown_route_and_method_are_json_errors(api):
    assert await api.call("GET", "/nothing") == (404, {"error": "No such API route."})
    status, body = await api.call("PUT", "/keys")
    assert status == 405 and body == {"error": "Method PUT is not allowed here."}


# --- keys -------------------------------------------------------------------------------

async def test_keys_create_list_revoke(api):
    status, new = await api.call("POST", "/keys", json={"name": "from-api"})
    assert status == 201
    assert new["key"].startswith("nmb_") and new["key"].startswith(new["prefix"])
    assert new["name"] == "from-api" and new["revoked_at"] is None
    assert TIME.match(new["created_at"])
    status, listed = await api.call("GET", "/keys")
    assert status == 200
    mine = [k for k in listed["items"] if k["id"] == new["id"]]
    assert len(mine) == 1 and "key" not in mine[0]
    status, revoked = await api.call("DELETE", f"/keys/{new['id']}")
    assert status == 200 and TIME.match(revoked["revoked_at"])
    assert (await api.call("GET", "/keys", new["key"]))[0] == 401


@pytest.mark.parametrize("body,status", [
    ({"name": ""}, 422), ({"name": 5}, 422), ({"name": "x" * 201}, 422), ([1], 400), ("no", 400),
])
async def test_keys_create_rejects_bad_bodies(api, body, status):
    kwargs = {"data": body} if isinstance(body, str) else {"json": body}
    got, answer = await api.call("POST", "/keys", **kwargs)
    assert got == status and answer["error"]


async def test_revoking_a_key_over_the_api_closes_its_sockets_with_4401(api):
    status, new = await api.call("POST", "/keys", json={"name": "live"})
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, api.server.url, new["key"])
        keys = (await api.call("GET", "/keys"))[1]["items"]
        assert [k["live_connections"] for k in keys if k["id"] == new["id"]] == [1]
        assert (await api.call("DELETE", f"/keys/{new['id']}"))[0] == 200
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4401


async def test_revoking_an_unknown_key_is_404(api):
    assert (await api.call("DELETE", "/keys/key_nope"))[0] == 404


# --- models and jobs --------------------------------------------------------------------

async def test_train_list_predict_and_delete_a_model(api):
    job = await api.train(strat="rest", model="LightGBM", type="reg", target="move")
    assert job["state"] == "succeeded" and job["progress"] == 1.0 and job["error"] is None
    status, models = await api.call("GET", "/models")
    assert status == 200
    mine = [m for m in models["items"] if m["id"] == job["model_id"]]
    assert len(mine) == 1
    model = mine[0]
    assert model["strat"] == "rest" and model["model"] == "LightGBM" and model["type"] == "reg"
    assert model["features"] == ["point1", "point2"] and model["window"] == 2
    assert model["latest"] is True and {"mae", "rmse"} <= set(model["metrics"])
    example = model["request_example"]
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, api.server.url, api.key)
        answer = None
        for _ in range(30):  # the server picks the new model up within its refresh interval
            answer = await ask(ws, example)
            if answer["type"] == "success":
                break
            await asyncio.sleep(0.1)
        assert answer["type"] == "success" and isinstance(answer["prediction"], float)
        status, deleted = await api.call("DELETE", f"/models/{model['id']}")
        assert status == 200 and deleted == {"deleted": [model["id"]]}
        for _ in range(30):
            answer = await ask(ws, example)
            if answer["type"] == "error":
                break
            await asyncio.sleep(0.1)
        assert answer["message"] == "Model configuration not found in the backend."
        await ws.close()
    assert (await api.call("DELETE", f"/models/{model['id']}"))[0] == 404


async def test_retraining_adds_a_version_and_deleting_the_model_removes_all(api):
    first = await api.train(strat="versions")
    second = await api.train(strat="versions", params='{"max_depth": 3}')
    assert first["version"] == 1 and second["version"] == 2
    models = (await api.call("GET", "/models"))[1]["items"]
    versions = [m for m in models if m["strat"] == "versions"]
    assert [(m["version"], m["latest"]) for m in versions] == [(2, True), (1, False)]
    assert versions[0]["params"] == {"max_depth": 3}
    status, deleted = await api.call("DELETE", f"/models/{versions[0]['model_id']}")
    assert status == 200 and len(deleted["deleted"]) == 2
    models = (await api.call("GET", "/models"))[1]["items"]
    assert not [m for m in models if m["strat"] == "versions"]


@pytest.mark.parametrize("fields,message", [
    ({"model": "Nope"}, "No installed model family 'Nope'"),
    ({"type": "both"}, "The model type must be 'class' or 'reg', not 'both'."),
    ({"target": None}, "The form field 'target' is required."),
    ({"window": "two"}, "'window' must be a whole number."),
    ({"window": "0"}, "The window must be a whole number from 1 to 1000, not 0."),
    ({"target": "nope"}, "The CSV: no column named 'nope'"),
    ({"params": "[1]"}, "'params' must be a JSON object of hyperparameters."),
    ({"colour": "blue"}, "Unknown form field 'colour'"),
])
async def test_training_request_errors_are_422(api, fields, message):
    status, answer = await api.call("POST", "/models", data=api.form(**fields))
    assert status == 422 and message in answer["error"]


async def test_a_bad_csv_is_422_or_a_failed_job_and_json_is_400(api):
    status, answer = await api.call("POST", "/models", data=api.form(b"a,b\n1\n"))
    assert status == 422 and "The CSV: no column named 'direction'" in answer["error"]
    # The header is all a server reads; the worker finds the rest.
    status, job = await api.call("POST", "/models", data=api.form(
        b"point1,point2,direction\n1,2,up\n3,4\n"))
    assert status == 202
    for _ in range(300):
        status, job = await api.call("GET", f"/jobs/{job['id']}")
        if job["state"] in ("succeeded", "failed"):
            break
        await asyncio.sleep(0.1)
    assert job["state"] == "failed" and "line 3 has 2 values" in job["error"]
    status, answer = await api.call("POST", "/models", json={"strat": "x"})
    assert status == 400 and "multipart/form-data" in answer["error"]


async def test_an_upload_over_the_limit_is_413(api, tmp_path, servers):
    from tests.harness import write_config

    config = write_config(tmp_path, server={"max_upload_size": 2048},
                          data_dir=api.workspace.data_dir)
    small = servers(config)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{small.port}/api/models",
                                headers=api.auth(), data=api.form()) as response:
            assert response.status == 413
            assert "larger than the limit of 2048 bytes" in (await response.json())["error"]


async def test_a_failing_fit_is_a_failed_job_with_the_reason(api):
    job = await api.train(strat="fails", params='{"min_samples_split": 1}')
    assert job["state"] == "failed"
    assert job["error"].startswith("DecisionTree could not be trained: ")
    assert job["model_id"] is None


async def test_unknown_job_is_404(api):
    assert (await api.call("GET", "/jobs/job_nope"))[0] == 404


# --- connections ------------------------------------------------------------------------

async def test_connections_listed_and_closed_with_4000(api):
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, api.server.url, api.key)
        await ask(ws, request())
        await ask(ws, "junk")
        status, live = await api.call("GET", "/connections")
        assert status == 200
        mine = [c for c in live["items"] if c["predictions"] == 1 and c["errors"] == 1]
        assert len(mine) == 1
        conn = mine[0]
        assert conn["remote"] == "127.0.0.1" and TIME.match(conn["opened_at"])
        assert TIME.match(conn["last_request_at"])
        status, closed = await api.call("DELETE", f"/connections/{conn['id']}")
        assert status == 200 and closed == {"id": conn["id"], "closed": True}
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4000
    assert (await api.call("DELETE", f"/connections/{conn['id']}"))[0] == 404


# --- usage ------------------------------------------------------------------------------

async def test_usage_has_charges_per_connection_and_day_with_totals(api):
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, api.server.url, api.key)
        for _ in range(3):
            await ask(ws, request())
        status, usage = await api.call("GET", "/usage")
        assert status == 200
        live = [row for row in usage["items"] if row["live"]]
        assert any(row["predictions"] == 3 for row in live)  # live counters, not yet closed
        await ws.close()
    await asyncio.sleep(0.3)
    status, usage = await api.call("GET", "/usage")
    rows = usage["items"]
    assert usage["currency"] == "USD"
    assert all(row["amount"] == "0.01" for row in rows)
    assert usage["totals"]["connections"] == len(rows)
    assert usage["totals"]["amount"] == str(sum(__import__("decimal").Decimal(r["amount"])
                                                for r in rows))
    assert sum(d["connections"] for d in usage["days"]) == len(rows)
    assert usage["totals"]["predictions"] == sum(r["predictions"] for r in rows)
    status, text = await api.call("GET", "/usage", params={"format": "csv"})
    exported = list(csv.DictReader(io.StringIO(text)))
    assert len(exported) == len(rows)
    assert {r["connection_id"] for r in exported} == {r["connection_id"] for r in rows}


# --- isolation --------------------------------------------------------------------------

async def test_one_account_never_sees_or_touches_anothers_resources(api):
    job = await api.train(strat="private")
    key_id = (await api.call("GET", "/keys"))[1]["items"][0]["id"]
    other = api.other_key
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, api.server.url, api.key)
        conn_id = (await api.call("GET", "/connections"))[1]["items"][0]["id"]
        # Listings of the other account contain nothing of ours.
        for path in ("/keys", "/models", "/connections"):
            listed = (await api.call("GET", path, other))[1]["items"]
            assert not [i for i in listed if i["id"] in (key_id, job["model_id"], conn_id)]
        assert (await api.call("GET", "/usage", other))[1]["items"] == []
        # Nor can it act on them: every attempt is a 404, and nothing changes.
        assert (await api.call("GET", f"/jobs/{job['id']}", other))[0] == 404
        assert (await api.call("DELETE", f"/keys/{key_id}", other))[0] == 404
        assert (await api.call("DELETE", f"/models/{job['model_id']}", other))[0] == 404
        assert (await api.call("DELETE", f"/connections/{conn_id}", other))[0] == 404
        assert (await ask(ws, request()))["type"] == "success"  # still open
        await ws.close()
    assert [k for k in (await api.call("GET", "/keys"))[1]["items"] if k["id"] == key_id][0][
        "revoked_at"] is None
    assert job["model_id"] in {m["id"] for m in (await api.call("GET", "/models"))[1]["items"]}
    # And its websocket cannot use our models.
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, api.server.url, other)
        answer = await ask(ws, request(strat_name="private"))
        assert answer["message"] == "Model configuration not found in the backend."
        await ws.close()


# --- OpenAPI ----------------------------------------------------------------------------


async def test_families_lists_every_installed_family(api):
    status, families = await api.call("GET", "/families")
    assert status == 200
    names = [f["name"] for f in families["items"]]
    assert names == sorted(names)
    assert {"DecisionTree", "RandomForest", "ExtraTrees", "GradientBoosting", "Linear",
            "XGBoost", "LightGBM"} <= set(names)
    assert all(f["library_version"] for f in families["items"])
