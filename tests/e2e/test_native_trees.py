"""Tree models compiled to native code (Treelite + TL2cgen + gcc) answer as the library does.

Every tree family, binary, multi-class and regression: the compiled single-row path against
the library's own ``predict`` over thousands of rows, classes exactly, values within float
tolerance. Then what happens when compiling can't: the model keeps its own path.
"""

from __future__ import annotations

import asyncio
import os

import aiohttp
import numpy as np
import pytest

from nember_core.plugins import collect_families, plugin_manager
from nember_core.trees import reader
from nember_core.trees.compiler import TreeCompiler, unavailable_reason
from nember_core.trees.native import NativeTrees
from tests.harness import (
    Workspace,
    require_service,
    run_cli,
    wait_until,
    write_config,
    write_prices,
)
from tests.helpers import ask, authed
from tests.synthetic import dataset

pytestmark = pytest.mark.e2e  # gcc and real nember processes: `pytest -m e2e`

require_service(unavailable_reason())
FAMILIES = collect_families(plugin_manager())
X, TARGETS, ROWS = dataset(7)

# Small models keep each compile to a second or two; the code paths are the same as large.
PARAMS = {
    "DecisionTree": {},
    "RandomForest": {"n_estimators": 10, "max_depth": 8},
    "ExtraTrees": {"n_estimators": 10, "max_depth": 8},
    "GradientBoosting": {"max_iter": 20},
    "XGBoost": {"n_estimators": 20},
    "LightGBM": {"n_estimators": 20},
}


async def compiled(ensemble, width: int, folder) -> NativeTrees | None:
    """``ensemble`` compiled in ``folder`` by a compiler of its own, as a server would."""
    compiler = TreeCompiler(folder)
    try:
        return await compiler.compile(ensemble, width)
    finally:
        await compiler.close()


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("family_name", list(PARAMS))
async def test_compiled_trees_equal_the_library(family_name, target, tmp_path):
    family = FAMILIES[family_name]
    model_type, y = TARGETS[target]
    model = family.loads(family.dumps(family.fit(X, y, model_type, PARAMS[family_name])),
                         model_type)
    expected = np.asarray(family.predict(model, model_type, ROWS))
    predict = family.predictor(model, model_type)
    native = await compiled(predict.ensemble, ROWS.shape[1], tmp_path)
    assert isinstance(native, NativeTrees)
    predict.ensemble.use_native(native)
    got = np.array([predict.one(ROWS[i : i + 1]) for i in range(len(ROWS))])
    if model_type == "class":
        assert (got == expected).all(), f"{(got != expected).sum()} rows differ"
    else:
        # XGBoost sums its leaves in float32, the compiled code in float64
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # The server's path: the row as floats, rounded by struct, no NumPy; the same answers.
    assert [predict.decide(native.sums(row.tolist())) for row in ROWS] == got.tolist()
    # ...and with the compiled reader: a request's points, read by name in C. One point of
    # five features, and five points of one.
    if reader.unavailable_reason() is not None:  # required by the reader's own tests below
        return
    names = ("e", "d", "c", "b", "a")
    wide, long = native.points_reader(names, 1), native.points_reader(("v",), 5)
    assert wide is not None and long is not None
    for read, points_of in (
        (wide, lambda row: [dict(zip(sorted(names), reversed(row), strict=True))]),
        (long, lambda row: [{"v": value} for value in row]),
    ):
        assert [predict.decide(read(points_of(row.tolist()))) for row in ROWS] == got.tolist()
    assert len(list(tmp_path.glob("tl2cgen-*.so"))) == 1


@pytest.mark.parametrize("family_name", ["XGBoost", "LightGBM"])  # float32 rows, float64 rows
async def test_the_compiled_reader_leaves_what_is_not_plainly_right_to_python(
    family_name, tmp_path
):
    """Whatever the reader can't read as the library would, it hands back (None): Python's
    checks then word the error, so both paths answer every request alike."""
    require_service(reader.unavailable_reason())
    family = FAMILIES[family_name]
    model = family.fit(X[:, :4], TARGETS["reg"][1], "reg", PARAMS[family_name])
    predict = family.predictor(model, "reg")
    native = await compiled(predict.ensemble, 4, tmp_path)
    read = native.points_reader(("x", "y"), 2)
    assert native.points_reader(("x", "y"), 3) is None  # not the compiled width
    good = [{"x": 0.5, "y": -1.0}, {"y": 2, "x": 1}]
    assert read(good) == native.sums([0.5, -1.0, 1.0, 2.0])
    float32 = family_name == "XGBoost"
    for points in (
        good[:1], good * 2, "points", None, [good[0], [0.5, 1.0]],
        [good[0], {"x": 1.0}], [good[0], {"x": 1.0, "y": 2.0, "z": 3.0}],
        [good[0], {"x": 1.0, "z": 2.0}], [good[0], {"x": True, "y": 1.0}],
        [good[0], {"x": "1.0", "y": 1.0}], [good[0], {"x": None, "y": 1.0}],
        [good[0], {"x": 10**400, "y": 1.0}],
        *([[good[0], {"x": 1e39, "y": 1.0}]] if float32 else []),
    ):
        assert read(points) is None, points
    if not float32:  # float64 rows take any double
        assert read([good[0], {"x": 1e39, "y": 1.0}]) == native.sums([0.5, -1.0, 1e39, 1.0])
    assert read([good[0], {"x": 10**15, "y": 1.0}]) == native.sums([0.5, -1.0, 1e15, 1.0])


async def test_a_compiler_that_fails_leaves_the_model_on_its_own_path(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "gcc"
    fake.write_text("#!/bin/sh\necho 'gcc: fatal error: the disk is on fire' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    family = FAMILIES["DecisionTree"]
    model = family.fit(X, TARGETS["reg"][1], "reg", {})
    predict = family.predictor(model, "reg")
    compiler = TreeCompiler(tmp_path / "compiled")
    try:
        assert await compiler.compile(predict.ensemble, X.shape[1]) is None
        # remembered: the same trees are not compiled again and again
        assert await compiler.compile(predict.ensemble, X.shape[1]) is None
    finally:
        await compiler.close()
    assert not predict.ensemble.native
    assert predict.one(ROWS[:1]) == pytest.approx(model.predict(ROWS[:1])[0])
    assert list((tmp_path / "compiled").glob("*.so")) == []


async def test_without_gcc_nothing_is_compiled(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcc there
    family = FAMILIES["DecisionTree"]
    predict = family.predictor(family.fit(X, TARGETS["reg"][1], "reg", {}), "reg")
    compiler = TreeCompiler(tmp_path / "compiled")
    assert compiler.unavailable == "gcc is not on the PATH"
    assert await compiler.compile(predict.ensemble, X.shape[1]) is None
    await compiler.close()


async def test_without_python_headers_compiled_trees_are_called_through_ctypes(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(reader, "unavailable_reason", lambda: "no Python.h here")
    family = FAMILIES["XGBoost"]
    predict = family.predictor(family.fit(X, TARGETS["reg"][1], "reg", PARAMS["XGBoost"]),
                               "reg")
    native = await compiled(predict.ensemble, X.shape[1], tmp_path)
    assert isinstance(native, NativeTrees)
    assert native.points_reader(("a", "b", "c", "d", "e"), 1) is None
    assert [p.name for p in tmp_path.glob("*.so")] == [
        p.name for p in tmp_path.glob("tl2cgen-*.so")]


def _compiling_workspace(folder) -> Workspace:
    """An account, its key and price data, for a server that compiles trees."""
    config = write_config(folder, server={"compile_trees": True})
    run_cli(config, "accounts", "create", "trader@example.com")
    key = run_cli(config, "keys", "create", "--account", "trader@example.com",
                  "--scope", "manage").stdout.strip().splitlines()[-1]
    return Workspace(folder, config, key, write_prices(folder / "prices.csv"))


async def test_a_served_model_switches_to_compiled_code_and_a_restart_reuses_it(
    tmp_path, servers
):
    workspace = _compiling_workspace(tmp_path)
    config, key = workspace.config, workspace.key
    for family, model_type in (("DecisionTree", "class"), ("XGBoost", "reg")):
        workspace.train(family, model_type, "compiled", "--param", "n_estimators=30"
                        if family == "XGBoost" else "random_state=0")
    # `nember train` compiled both already (tests/inprocess/test_config_and_cli.py); this
    # test is about a server compiling what it loads: start it without them.
    compiled = list((tmp_path / "data" / "compiled").glob("tl2cgen-*.so"))
    assert len(compiled) == 2
    for library in compiled:
        library.unlink()
    frames = [
        {"strat_name": "compiled", "model_name": family, "model_type": model_type,
         "DataPoints": [{"point1": p1, "point2": p2}, {"point1": p2, "point2": p1}]}
        for family, model_type in (("DecisionTree", "class"), ("XGBoost", "reg"))
        for p1, p2 in ((0.1, -0.3), (1.5, 0.2), (-2.0, 0.7))
    ]

    async def predictions(server):
        async with aiohttp.ClientSession() as session:
            ws = await authed(session, server.url, key)
            answers = [await ask(ws, frame) for frame in frames]
            await ws.close()
        return [answer["prediction"] for answer in answers]

    server = servers(config)
    before = await predictions(server)  # the first requests load the models
    wait_until(lambda: len(server.events("compiler.finished")) == 2, 90, "two compiled models")

    def native():
        return [e["family"] for e in server.events("model.loaded") if e["native"]]

    wait_until(lambda: len(native()) == 2, what="both models re-measured as compiled")
    assert sorted(native()) == ["DecisionTree", "XGBoost"]
    after = await predictions(server)
    assert after[:3] == before[:3]  # classes: exactly
    assert after[3:] == pytest.approx(before[3:], rel=1e-9)
    assert len(list((tmp_path / "data" / "compiled").glob("tl2cgen-*.so"))) == 2
    server.terminate()
    server.log_path.unlink()  # the restarted server logs to the same file

    restarted = servers(config)
    again = await predictions(restarted)
    assert again[:3] == after[:3] and again[3:] == pytest.approx(after[3:], rel=1e-9)
    loaded = restarted.events("model.loaded")
    assert len(loaded) == 2 and all(e["native"] for e in loaded)  # native from the start
    assert restarted.events("compiler.started") == []


async def test_a_model_trained_through_the_api_is_compiled_before_anyone_asks(
    tmp_path, servers
):
    workspace = _compiling_workspace(tmp_path)
    config, key = workspace.config, workspace.key
    server = servers(config)
    form = aiohttp.FormData()
    form.add_field("data", workspace.data.read_bytes(),
                   filename="prices.csv", content_type="text/csv")
    for name, value in {"strat": "fresh", "model": "ExtraTrees", "type": "reg",
                        "target": "move", "window": "2", "features": "point1,point2",
                        "params": '{"n_estimators": 20}'}.items():
        form.add_field(name, value)
    base = f"http://127.0.0.1:{server.port}/api"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        async with session.post(f"{base}/models", data=form) as response:
            assert response.status == 202, await response.text()
            job = await response.json()
        for _ in range(300):
            async with session.get(f"{base}/jobs/{job['id']}") as response:
                job = await response.json()
            if job["state"] != "running" and job["state"] != "queued":
                break
            await asyncio.sleep(0.1)
    assert job["state"] == "succeeded", job
    wait_until(lambda: server.events("compiler.finished"), 90, "a compiled model")
    native = wait_until(lambda: [e for e in server.events("model.loaded") if e["native"]],
                        what="the model re-measured as compiled")
    assert [(e["strat"], e["family"]) for e in native] == [("fresh", "ExtraTrees")]
    assert server.events("connection.open") == []  # nobody asked for a prediction


async def test_compiled_and_plain_servers_answer_every_request_alike(tmp_path, servers):
    """The compiled reader reads a frame's points in C and hands anything not plainly right
    to Python: a server on it answers good and bad requests as one that compiles nothing."""
    require_service(reader.unavailable_reason())
    workspace = _compiling_workspace(tmp_path)
    for family in ("XGBoost", "LightGBM"):  # rows rounded to float32, rows in float64
        workspace.train(family, "reg", "alike", "--param", "n_estimators=20")
    assert list((tmp_path / "data" / "compiled").glob("reader-*.so"))  # built by `nember train`
    plain = write_config(tmp_path / "plain", server={"compile_trees": False},
                         data_dir=tmp_path / "data")
    points = [
        '{"point1": 0.25, "point2": -1.5}, {"point2": 3, "point1": 2}',  # names in any order
        '{"point1": 1e39, "point2": 0.5}, {"point1": 0.1, "point2": 0.2}',  # beyond float32
        '{"point1": 9007199254740993, "point2": 0.5}, {"point1": -7, "point2": 0.2}',  # ints
        '{"point1": true, "point2": 0.5}, {"point1": 0.1, "point2": 0.2}',
        '{"point1": "0.3", "point2": 0.5}, {"point1": 0.1, "point2": 0.2}',
        '{"point1": 0.3}, {"point1": 0.1, "point2": 0.2}',
        '{"point1": 0.3, "point2": 0.5, "point3": 1}, {"point1": 0.1, "point2": 0.2}',
        '{"point1": 0.3, "point2": 0.5}',
        '[0.3, 0.5], {"point1": 0.1, "point2": 0.2}',
    ]
    frames = [
        f'{{"strat_name": "alike", "model_name": "{family}", "model_type": "reg", '
        f'"DataPoints": [{text}]}}'
        for family in ("XGBoost", "LightGBM") for text in points
    ]

    async def answers(server):
        async with aiohttp.ClientSession() as session:
            ws = await authed(session, server.url, workspace.key)
            got = [await ask(ws, frame) for frame in frames]
            await ws.close()
        return got

    compiled = servers(workspace.config)
    on_compiled = await answers(compiled)
    assert all(e["native"] for e in compiled.events("model.loaded"))
    compiled.terminate()
    on_plain = await answers(servers(plain))
    assert [a["type"] for a in on_compiled] == [a["type"] for a in on_plain]
    for mine, theirs in zip(on_compiled, on_plain, strict=True):
        assert mine.keys() == theirs.keys() and mine.get("message") == theirs.get("message")
        if "prediction" in mine:  # XGBoost sums in float32 itself, the compiled code in float64
            assert mine["prediction"] == pytest.approx(theirs["prediction"], rel=1e-5)
    assert [a["type"] for a in on_compiled[:3]] == ["success"] * 3
