"""Bring your own model: ``nember models import`` and ``POST /api/models/import`` store a model
trained elsewhere (ONNX, XGBoost, LightGBM) that bots then ask over ``/ws`` like a trained one;
a file that doesn't load or doesn't fit is refused with one clear line, and nothing is stored.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import pickle
import re
import time
import zipfile
from pathlib import Path

import aiohttp
import joblib
import numpy as np
import pytest

# Imports of every format: the onnx, xgboost and lightgbm extras (tox -e minimal has none).
pytest.importorskip("onnxruntime")
xgboost = pytest.importorskip("xgboost")
lightgbm = pytest.importorskip("lightgbm")

from nember_onnx import OnnxFamily
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from nember_core.app import cli
from nember_core.errors import InvalidData, ModelFileRejected
from nember_core.services import ImportRequest, TrainingRequest
from nember_core.training import importing
from nember_core.training.dataset import read_csv, windowed

from .conftest import EMAIL, ask, authed
from .test_config_and_cli import _isolated_logging, one_error_line

FEATURES = ["point1", "point2"]
WINDOW = 2


@pytest.fixture(scope="module")
def samples(prepared):
    """The prepared CSV as models see it: window-2 rows, the labels and the moves."""
    data = read_csv(prepared.data, "direction", FEATURES, False, None)
    X = windowed(data.X, WINDOW)
    labels = np.array(data.y[WINDOW - 1:])
    moves = np.array(read_csv(prepared.data, "move", FEATURES, False, None).y[WINDOW - 1:])
    return X, labels, moves


def _onnx(estimator, width: int) -> bytes:
    return to_onnx(estimator, np.zeros((1, width), dtype=np.float32),
                   options={"zipmap": False}).SerializeToString()


def _points(row: np.ndarray) -> list[dict[str, float]]:
    """A request's DataPoints for one model row (oldest point first)."""
    return [dict(zip(FEATURES, map(float, row[i * 2:(i + 1) * 2]), strict=True))
            for i in range(WINDOW)]


def _request(strat: str, family: str, model_type: str, row: np.ndarray, **extra) -> dict:
    return {"strat_name": strat, "model_name": family, "model_type": model_type,
            "DataPoints": _points(row), **extra}


def _form(artifact: bytes, **fields) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", artifact, filename="model.bin",
                   content_type="application/octet-stream")
    for name, value in fields.items():
        form.add_field(name, str(value))
    return form


async def _post(client, key: str, artifact: bytes, **fields) -> tuple[int, dict]:
    fields = {"model": "ONNX", "type": "class", "features": ",".join(FEATURES),
              "window": WINDOW, **fields}
    async with client.post("/api/models/import", data=_form(artifact, **fields),
                           headers={"Authorization": f"Bearer {key}"}) as response:
        return response.status, await response.json()


async def _account(services):
    return await services.accounts.by_email(EMAIL)


async def _stored(services, strat: str) -> list:
    owner = await _account(services)
    return [v.meta for v in await services.models.versions(owner.id) if v.meta.key.strat == strat]


# --- served over the websocket ------------------------------------------------------------

async def test_an_onnx_classifier_imported_over_rest_answers_as_scikit_learn(
        client, prepared, samples):
    X, labels, _ = samples
    estimator = DecisionTreeClassifier(max_depth=4, random_state=0).fit(X, labels)
    assert list(estimator.classes_) == ["down", "up"]
    status, body = await _post(client, prepared.key, _onnx(estimator, X.shape[1]),
                               strat="byo_onnx", classes="down,up", target="direction")
    assert status == 201, body
    assert (body["model"], body["type"], body["version"], body["latest"]) == (
        "ONNX", "class", 1, True)
    assert (body["features"], body["window"], body["classes"], body["target"]) == (
        FEATURES, WINDOW, ["down", "up"], "direction")
    assert (body["samples"], body["evaluation"], body["params"]) == (0, None, {})
    assert body["family_version"].startswith("onnxruntime ")

    ws = await authed(client, prepared.key)
    rows = X[::37][:8]
    answers = [await ask(ws, _request("byo_onnx", "ONNX", "class", row)) for row in rows]
    assert answers[0]["message"] == "New model configuration added, prediction made"
    assert [a["prediction"] for a in answers] == list(estimator.predict(rows))
    asked = await ask(ws, _request("byo_onnx", "ONNX", "class", rows[0], probabilities=True))
    expected = estimator.predict_proba(rows[:1])[0]
    assert set(asked["probabilities"]) == {"down", "up"}
    assert math.isclose(asked["probabilities"]["down"], expected[0], abs_tol=1e-5)
    assert math.isclose(asked["probabilities"]["up"], expected[1], abs_tol=1e-5)
    await ws.close()


async def test_xgboost_and_lightgbm_files_imported_through_the_service_answer(
        client, services, prepared, samples, tmp_path):
    X, labels, moves = samples
    y = (labels == "up").astype(int)
    booster = xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(X, y).get_booster()
    booster.save_model(tmp_path / "model.json")  # the library's JSON, as traders save it
    lgbm = lightgbm.LGBMRegressor(n_estimators=30, verbosity=-1).fit(X, moves).booster_
    lgbm.save_model(tmp_path / "model.txt")
    owner = await _account(services)
    xgb = await services.models.import_model(owner.id, ImportRequest(
        strat="byo_libs", family="XGBoost", model_type="class",
        artifact=(tmp_path / "model.json").read_bytes(), features=FEATURES, window=WINDOW,
        classes=["down", "up"]))
    lgb = await services.models.import_model(owner.id, ImportRequest(
        strat="byo_libs", family="LightGBM", model_type="reg",
        artifact=(tmp_path / "model.txt").read_bytes(), features=FEATURES, window=WINDOW))
    assert (xgb.version, xgb.classes, lgb.version, lgb.classes) == (1, ("down", "up"), 1, None)
    assert xgb.family_version.startswith("xgboost ") and lgb.samples == 0

    ws = await authed(client, prepared.key)
    rows = X[5::41][:6]
    for row in rows:
        answer = await ask(ws, _request("byo_libs", "XGBoost", "class", row))
        up = booster.inplace_predict(row.reshape(1, -1))[0] > 0.5
        assert answer["prediction"] == ("up" if up else "down")
        answer = await ask(ws, _request("byo_libs", "LightGBM", "reg", row))
        assert math.isclose(answer["prediction"], lgbm.predict(row.reshape(1, -1))[0],
                            rel_tol=1e-6, abs_tol=1e-9)
    await ws.close()


async def test_an_xgboost_ubjson_file_and_default_classes(services, samples, tmp_path):
    """No classes named: the class indices are the labels (0, 1), counted from the model's
    probabilities."""
    X, labels, _ = samples
    booster = xgboost.XGBClassifier(n_estimators=5).fit(X, labels == "up").get_booster()
    booster.save_model(tmp_path / "model.ubj")
    owner = await _account(services)
    meta = await services.models.import_model(owner.id, ImportRequest(
        strat="byo_ubj", family="XGBoost", model_type="class",
        artifact=(tmp_path / "model.ubj").read_bytes(), features=FEATURES, window=WINDOW))
    assert meta.classes == (0, 1)


# --- refused, with one clear error, and nothing stored --------------------------------------

async def test_a_file_whose_input_is_not_window_x_features_wide_is_refused(
        client, services, prepared, samples):
    X, labels, _ = samples
    estimator = LogisticRegression().fit(X[:, :4], labels)
    model = _onnx(estimator, 4)
    status, body = await _post(client, prepared.key, model, strat="byo_width",
                               features="point1,point2,point3")
    assert (status, body) == (400, {"error": (
        "The uploaded file: the model can't answer a row of 3 features x window 2 = 6 inputs: "
        "the model expects 4 inputs per row, not 6.")})
    assert await _stored(services, "byo_width") == []
    # The same file with the width it takes is served.
    status, body = await _post(client, prepared.key, model, strat="byo_width")
    assert (status, body["version"], body["classes"]) == (201, 1, [0, 1])


async def test_library_files_of_another_width_are_refused(services, samples, tmp_path):
    X, labels, moves = samples
    owner = await _account(services)
    narrow = lightgbm.LGBMRegressor(n_estimators=5, verbosity=-1).fit(X[:, :3], moves)
    request = ImportRequest(strat="byo_narrow", family="LightGBM", model_type="reg",
                            artifact=narrow.booster_.model_to_string().encode(),
                            features=FEATURES, window=WINDOW, label="model.txt")
    with pytest.raises(ModelFileRejected) as refused:
        await services.models.import_model(owner.id, request)
    assert str(refused.value).startswith(
        "model.txt: the model can't answer a row of 2 features x window 2 = 4 inputs: The "
        "number of features in data (4) is not the same as it was in training data (3)")
    booster = xgboost.XGBClassifier(n_estimators=5).fit(X[:, :3], labels == "up")
    with pytest.raises(ModelFileRejected, match="Feature shape mismatch, expected: 3, got 4"):
        await services.models.import_model(owner.id, ImportRequest(
            strat="byo_narrow", family="XGBoost", model_type="class",
            artifact=bytes(booster.get_booster().save_raw("json")), features=FEATURES,
            window=WINDOW))
    assert await _stored(services, "byo_narrow") == []


async def test_classes_must_match_what_the_model_outputs(client, prepared, samples):
    X, labels, _ = samples
    model = _onnx(LogisticRegression().fit(X, labels), X.shape[1])
    status, body = await _post(client, prepared.key, model, strat="byo_classes",
                               classes="down,flat,up")
    assert (status, body) == (400, {"error": "The uploaded file: the model gives probabilities "
                                             "for 2 classes, but 3 classes were named."})
    status, body = await _post(client, prepared.key, model, strat="byo_classes", type="reg")
    assert (status, body) == (400, {"error": (  # two probabilities a row are no reg value
        "The uploaded file: the model can't answer a row of 2 features x window 2 = 4 inputs: "
        "the model gives 2 values for 1 row, not one a row.")})
    status, body = await _post(client, prepared.key, model, strat="byo_classes",
                               type="reg", classes="down,up")
    assert (status, body) == (422, {"error": "Classes name a class model's labels; a reg "
                                             "model has none."})


async def test_a_model_giving_class_indices_only_needs_its_classes_named(client, prepared):
    graph = helper.make_graph(
        [helper.make_node("ArgMax", ["X"], ["index"], axis=1, keepdims=0)], "argmax",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("index", TensorProto.INT64, [None])])
    # Opset 17's IR version: older ONNX Runtimes (Python 3.10's) refuse the newest.
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])
    data = model.SerializeToString()
    status, body = await _post(client, prepared.key, data, strat="byo_argmax")
    assert (status, body) == (422, {"error": (
        "The uploaded file: the model gives no class probabilities to count its classes by: "
        "name them (the label of each class index, in order).")})
    status, body = await _post(client, prepared.key, data, strat="byo_argmax",
                               classes="a,b,c,d")
    assert (status, body["classes"]) == (201, ["a", "b", "c", "d"])
    ws = await authed(client, prepared.key)
    row = np.array([0.0, 0.0, 5.0, 1.0])  # the largest value is the third: class "c"
    assert (await ask(ws, _request("byo_argmax", "ONNX", "class", row)))["prediction"] == "c"
    await ws.close()


def _joblib_bytes(estimator, tmp_path: Path) -> bytes:
    joblib.dump(estimator, tmp_path / "model.joblib", compress=3)
    return (tmp_path / "model.joblib").read_bytes()


def _zip_of_a_pickle(estimator) -> bytes:
    """As PyTorch's torch.save writes: a zip whose data.pkl unpickles the model."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(estimator))
    return out.getvalue()


async def test_pickles_are_refused_before_any_library_reads_them(
        client, services, prepared, samples, tmp_path):
    X, labels, _ = samples
    estimator = DecisionTreeClassifier(max_depth=2).fit(X, labels)
    code = "pickle files can run code when loaded, so Nember refuses them; export the model " \
           "to ONNX instead (or save it in its library's own format)."
    status, body = await _post(client, prepared.key, pickle.dumps(estimator), strat="byo_pkl")
    assert (status, body) == (400, {"error": f"The uploaded file is a Python pickle: {code}"})
    status, body = await _post(client, prepared.key, pickle.dumps(estimator, protocol=0),
                               strat="byo_pkl", model="XGBoost")
    assert (status, body) == (400, {"error": f"The uploaded file is a Python pickle: {code}"})
    status, body = await _post(client, prepared.key, _joblib_bytes(estimator, tmp_path),
                               strat="byo_pkl", model="LightGBM")
    assert (status, body) == (400, {"error": "The uploaded file is a compressed Python "
                                             f"pickle (joblib): {code}"})
    status, body = await _post(client, prepared.key, _zip_of_a_pickle(estimator),
                               strat="byo_pkl")
    assert (status, body) == (400, {"error": "The uploaded file is an archive of Python "
                                             f"pickles (joblib, PyTorch): {code}"})
    assert await _stored(services, "byo_pkl") == []


async def test_files_a_family_cant_load_are_refused(client, prepared):
    status, body = await _post(client, prepared.key, b"just some text", strat="byo_junk")
    assert (status, body) == (400, {"error": "The uploaded file doesn't load as a model of "
                                             "the ONNX family: not an ONNX model: the bytes "
                                             "don't read as one."})
    status, body = await _post(client, prepared.key, b"{\"learner\": 1}", strat="byo_junk",
                               model="XGBoost")
    assert status == 400 and body["error"].startswith(
        "The uploaded file doesn't load as a model of the XGBoost family: not an XGBoost "
        "model")


async def test_unknown_families_and_bad_fields_are_refused(client, prepared, samples):
    X, labels, _ = samples
    model = _onnx(LogisticRegression().fit(X, labels), X.shape[1])
    status, body = await _post(client, prepared.key, model, strat="byo_fields", model="Nope")
    assert status == 422
    assert body["error"].startswith("No installed model family 'Nope' (installed: ")
    assert "ONNX" in body["error"]
    cases = [
        ({"features": "point1,point1"}, "The feature 'point1' is named twice."),
        ({"window": 0}, "The window must be a whole number from 1 to 1000, not 0."),
        ({"window": "two"}, "'window' must be a whole number."),
        ({"features": " , "}, "Name the model's features, in the order of its input."),
        ({"classes": "up"}, "Name 2 to 1000 classes, the label of each class index in order."),
        ({"classes": "up,up"}, "Each class label must be named once."),
        ({"type": "maybe"}, "The model type must be 'class' or 'reg', not 'maybe'."),
    ]
    for fields, error in cases:
        assert await _post(client, prepared.key, model, **{"strat": "byo_fields", **fields}) \
            == (422, {"error": error}), fields
    async with client.post("/api/models/import", data=_form(model, strat="s", model="ONNX",
                                                            type="class", features="a",
                                                            colour="red"),
                           headers={"Authorization": f"Bearer {prepared.key}"}) as response:
        assert response.status == 422
        assert (await response.json())["error"].startswith("Unknown form field 'colour'")
    async with client.post("/api/models/import", json={"strat": "s"},
                           headers={"Authorization": f"Bearer {prepared.key}"}) as response:
        assert (response.status, await response.json()) == (400, {"error": (
            "Send the model as multipart/form-data with the file as 'file'.")})
    form = aiohttp.FormData({"strat": "s", "model": "ONNX", "type": "class", "features": "a"})
    form.add_field("notes", b"", filename="notes.txt")  # multipart, a file, but not 'file'
    async with client.post("/api/models/import", data=form,
                           headers={"Authorization": f"Bearer {prepared.key}"}) as response:
        assert response.status == 422


async def test_a_read_key_is_refused(client, services, prepared, samples):
    X, labels, _ = samples
    owner = await _account(services)
    read = await services.keys.create(owner.id, "reader", "read")
    model = _onnx(LogisticRegression().fit(X, labels), X.shape[1])
    assert await _post(client, read.secret, model, strat="byo_read") == (403, {
        "error": "This API key's scope is 'read'; this route needs 'manage'."})
    predict = await services.keys.create(owner.id, "bot", "predict")
    assert (await _post(client, predict.secret, model, strat="byo_read"))[0] == 403
    assert await _stored(services, "byo_read") == []


# --- ONNX is imported, never trained ---------------------------------------------------------

async def test_training_an_imported_only_family_names_the_import(client, services, prepared):
    owner = await _account(services)
    with pytest.raises(InvalidData) as refused:
        await services.models.train(owner.id, TrainingRequest(
            strat="byo_train", family="ONNX", model_type="class", data=prepared.data,
            target="direction", window=WINDOW, features=FEATURES))
    assert str(refused.value) == (
        "ONNX models are not trained by Nember: import one trained elsewhere with `nember "
        "models import` (or POST /api/models/import)")
    form = aiohttp.FormData()
    form.add_field("data", prepared.data.read_bytes(), filename="prices.csv")
    for name, value in {"strat": "byo_train", "model": "ONNX", "type": "class",
                        "target": "direction"}.items():
        form.add_field(name, value)
    async with client.post("/api/models", data=form,
                           headers={"Authorization": f"Bearer {prepared.key}"}) as response:
        assert response.status == 422
        assert "import one trained elsewhere with `nember models import`" in (
            await response.json())["error"]


# --- a library that crashes or hangs on a file takes only the check's process down ----------

class CrashingFamily(OnnxFamily):
    """Loads as a native library may on a crafted file: it kills its process."""

    def loads(self, data, model_type):
        os.abort()


class HangingFamily(OnnxFamily):
    def loads(self, data, model_type):
        time.sleep(60)


async def test_a_library_crash_or_hang_is_one_error_and_the_server_lives_on(
        client, services, prepared, samples, monkeypatch):
    X, labels, _ = samples
    model = _onnx(LogisticRegression().fit(X, labels), X.shape[1])
    monkeypatch.setitem(services.models.families, "Crashing", CrashingFamily(name="Crashing"))
    monkeypatch.setitem(services.models.families, "Hanging", HangingFamily(name="Hanging"))
    # Long enough for the crashing child to start (it imports this module: seconds on a busy
    # machine), short for the hanging one.
    monkeypatch.setattr(importing, "IMPORT_TIMEOUT", 60.0)
    owner = await _account(services)

    def request(family: str) -> ImportRequest:
        return ImportRequest(strat="byo_crash", family=family, model_type="class",
                             artifact=model, features=FEATURES, window=WINDOW,
                             label="model.onnx")

    with pytest.raises(ModelFileRejected) as refused:
        await services.models.import_model(owner.id, request("Crashing"))
    assert str(refused.value) == "model.onnx: the Crashing library crashed loading it"
    monkeypatch.setattr(importing, "IMPORT_TIMEOUT", 3.0)
    started = time.monotonic()
    with pytest.raises(ModelFileRejected) as refused:
        await services.models.import_model(owner.id, request("Hanging"))
    assert str(refused.value) == "model.onnx: loading it took over 3 s"
    assert time.monotonic() - started < 20
    assert await _stored(services, "byo_crash") == []
    ws = await authed(client, prepared.key)  # this process still serves
    assert (await ask(ws, _request("example_strategy", "DecisionTree", "class", X[0])))[
        "type"] == "success"
    await ws.close()


# --- the command line -----------------------------------------------------------------------

@pytest.fixture
def nember_cli(prepared, capsys, monkeypatch):
    """``nember --config <prepared> ARGS`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.chdir(prepared.config.parent)

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        with _isolated_logging():
            code = cli.main(["--config", str(prepared.config), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


# The test server's own log lines, printed by this process while the command runs.
SERVER_LOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


def _printed(out: str) -> list[str]:
    """What the command printed, without the server's log lines."""
    return [line for line in out.splitlines() if not SERVER_LOG.match(line)]


async def test_the_cli_imports_a_model_that_then_serves(nember_cli, client, prepared, samples,
                                                       tmp_path):
    X, labels, _ = samples
    estimator = DecisionTreeClassifier(max_depth=3, random_state=0).fit(X, labels)
    path = tmp_path / "model.onnx"
    path.write_bytes(_onnx(estimator, X.shape[1]))
    # main() runs its own event loop, as the command does: in a thread, beside this test's.
    code, out, err = await asyncio.to_thread(
        nember_cli, "models", "import", "--account", EMAIL, "--strat", "byo_cli", "--model",
        "ONNX", "--type", "class", "--file", str(path), "--features", "point1, point2",
        "--window", "2", "--classes", "down,up")
    assert (code, err) == (0, "")
    assert _printed(out) == ["Imported ONNX class model for strategy 'byo_cli', version 1: 2 "
                             "features x window 2, classes down,up"]
    code, out, _ = await asyncio.to_thread(nember_cli, "models", "list", "--account", EMAIL)
    row = next(line for line in out.splitlines() if line.startswith("byo_cli\t"))
    assert row.split("\t")[:4] == ["byo_cli", "ONNX", "class", "1*"]
    assert row.endswith("\timported: not evaluated by Nember")

    ws = await authed(client, prepared.key)
    rows = X[3::53][:5]
    answers = [await ask(ws, _request("byo_cli", "ONNX", "class", row)) for row in rows]
    assert [a["prediction"] for a in answers] == list(estimator.predict(rows))
    await ws.close()


def test_the_cli_says_what_is_wrong_in_one_line(nember_cli, samples, tmp_path):
    X, labels, _ = samples
    wide = tmp_path / "wide.onnx"
    wide.write_bytes(_onnx(LogisticRegression().fit(X, labels), X.shape[1]))
    base = ["models", "import", "--account", EMAIL, "--strat", "byo_cli_errors", "--model",
            "ONNX", "--type", "class", "--file"]
    assert one_error_line(nember_cli(*base, str(wide), "--features", "point1")) == (
        f"nember: error: {wide}: the model can't answer a row of 1 feature x window 1 = 1 "
        "inputs: the model expects 4 inputs per row, not 1")
    assert one_error_line(nember_cli(*base, str(tmp_path / "nope.onnx"), "--features", "a")) \
        == f"nember: error: --file: cannot read {tmp_path / 'nope.onnx'}: No such file or " \
           "directory"
    pickled = tmp_path / "model.pkl"
    pickled.write_bytes(pickle.dumps(labels))
    assert one_error_line(nember_cli(*base, str(pickled), "--features", "a")).startswith(
        f"nember: error: {pickled} is a Python pickle: pickle files can run code when loaded")
    assert one_error_line(nember_cli(*base, str(wide), "--features", " , ")) == (
        "nember: error: --features: name at least one feature")
