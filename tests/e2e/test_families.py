"""Every model family x type: trained from a CSV through the CLI, predicted over the socket,
and equal to the same estimator fitted in this process on the same windows."""

from __future__ import annotations

import csv
import time

import aiohttp
import numpy as np
import pytest

from tests.helpers import ask, authed

pytestmark = pytest.mark.e2e  # real nember processes: `pytest -m e2e`

FAMILIES = ["DecisionTree", "RandomForest", "ExtraTrees", "GradientBoosting", "Linear",
            "XGBoost", "LightGBM"]
WINDOW = 2


def estimator(family: str, model_type: str):
    """The library's own estimator, configured as the plugin documents its defaults."""
    import lightgbm
    import xgboost
    from sklearn import ensemble, linear_model, tree

    cls = model_type == "class"
    seeded = {"random_state": 0}
    forest = {"n_estimators": 100, "random_state": 0, "n_jobs": 1}
    return {
        "DecisionTree": lambda: (tree.DecisionTreeClassifier if cls
                                 else tree.DecisionTreeRegressor)(**seeded),
        "RandomForest": lambda: (ensemble.RandomForestClassifier if cls
                                 else ensemble.RandomForestRegressor)(**forest),
        "ExtraTrees": lambda: (ensemble.ExtraTreesClassifier if cls
                               else ensemble.ExtraTreesRegressor)(**forest),
        "GradientBoosting": lambda: (ensemble.HistGradientBoostingClassifier if cls
                                     else ensemble.HistGradientBoostingRegressor)(**seeded),
        "Linear": lambda: (linear_model.LogisticRegression(max_iter=1000) if cls
                           else linear_model.LinearRegression()),
        "XGBoost": lambda: (xgboost.XGBClassifier if cls else xgboost.XGBRegressor)(**forest),
        "LightGBM": lambda: (lightgbm.LGBMClassifier if cls else lightgbm.LGBMRegressor)(
            **forest, verbosity=-1),
    }[family]()


def windows(path):
    """Samples built the way PROTOCOL.md §3 says, independently of nember_core."""
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    samples, points, labels, values = [], [], [], []
    for t in range(WINDOW - 1, len(rows)):
        window = rows[t - WINDOW + 1 : t + 1]
        points.append([{"point1": float(r["point1"]), "point2": float(r["point2"])}
                       for r in window])
        samples.append([v for p in points[-1] for v in (p["point1"], p["point2"])])
        labels.append(rows[t]["direction"])
        values.append(float(rows[t]["move"]))
    return np.array(samples), points, labels, np.array(values)


def reference(data, family: str, model_type: str):
    """The windows, and the library's estimator fitted on them in this process."""
    X, points, labels, values = windows(data)
    model = estimator(family, model_type)
    classes = sorted(set(labels))
    if model_type == "class":
        model.fit(X, np.array([classes.index(label) for label in labels]))
    else:
        model.fit(X, values)
    return X, points, model, classes


@pytest.fixture(scope="module")
def all_trained(workspace):
    for family in FAMILIES:
        for model_type in ("class", "reg"):
            result = workspace.train(family, model_type, "families")
            assert result.stdout.startswith(f"Trained {family} {model_type}")
    return workspace


@pytest.fixture(scope="module")
def family_server(all_trained, module_servers):
    return module_servers(all_trained.config)


@pytest.mark.parametrize("model_type", ["class", "reg"])
@pytest.mark.parametrize("family", FAMILIES)
async def test_socket_prediction_equals_in_process_estimator(
    family_server, all_trained, family, model_type
):
    X, points, model, classes = reference(all_trained.data, family, model_type)
    picks = [0, 1, 57, 123, len(points) - 1]
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, family_server.url, all_trained.key)
        for i in picks:
            answer = await ask(ws, {
                "strat_name": "families", "model_name": family, "model_type": model_type,
                "DataPoints": points[i],
            })
            assert answer["type"] == "success", answer
            expected = model.predict(X[i : i + 1])[0]
            if model_type == "class":
                assert answer["prediction"] == classes[int(expected)]
            else:
                # Float tolerance: the fast predictors sum the trees in another order.
                assert answer["prediction"] == pytest.approx(float(expected), rel=1e-5, abs=1e-6)
        await ws.close()


def test_training_output_reports_the_walk_forward_scores(all_trained):
    result = all_trained.train("DecisionTree", "class", "metrics")
    assert "Walk-forward over 5 folds" in result.stdout
    assert "accuracy  bal. acc.   log loss" in result.stdout
    result = all_trained.train("Linear", "reg", "metrics")
    assert "MAE       RMSE         R²   hit rate" in result.stdout


@pytest.mark.parametrize("model_type", ["class", "reg"])
@pytest.mark.parametrize("family", ["RandomForest", "GradientBoosting", "XGBoost", "LightGBM"])
async def test_concurrent_requests_batched_together_get_their_own_predictions(
    family_server, all_trained, family, model_type
):
    """Many sockets asking at once: costly models answer them from one batch; each answer
    must still be its own window's prediction, in order, with its own seq_num."""
    import asyncio

    X, points, model, classes = reference(all_trained.data, family, model_type)
    async with aiohttp.ClientSession() as session:
        sockets = [await authed(session, family_server.url, all_trained.key) for _ in range(24)]

        async def two_requests(ws, i):
            answers = []
            for j in (i, i + 100):
                answers.append(await ask(ws, {
                    "strat_name": "families", "model_name": family, "model_type": model_type,
                    "DataPoints": points[j],
                }))
            return answers

        results = await asyncio.gather(*(two_requests(ws, i) for i, ws in enumerate(sockets)))
        for i, answers in enumerate(results):
            assert [a["seq_num"] for a in answers] == [1, 2]
            assert [a["message"] for a in answers] == [
                "New model configuration added, prediction made",
                "Existing model data used for prediction",
            ]
            for answer, j in zip(answers, (i, i + 100), strict=True):
                expected = model.predict(X[j : j + 1])[0]
                if model_type == "class":
                    assert answer["prediction"] == classes[int(expected)]
                else:
                    assert answer["prediction"] == pytest.approx(float(expected), rel=1e-5,
                                                                 abs=1e-6)
        for ws in sockets:
            await ws.close()
    loaded = [e for e in family_server.events("model.loaded") if e["family"] == family]
    if family in ("RandomForest", "GradientBoosting"):
        assert any(e["batched"] for e in loaded)  # these are costly enough to batch


def test_the_server_imports_every_familys_library_when_it_starts(family_server):
    """So that the first request for a model after a restart doesn't wait ~2 s for XGBoost's
    import (measured: 78 ms for a first prediction 4 s after start, 2.4 s without)."""
    deadline = time.monotonic() + 60
    while not (warmed := family_server.events("families.warmed")):
        assert time.monotonic() < deadline, family_server.log()
        time.sleep(0.1)
    assert set(FAMILIES) <= set(warmed[0]["families"])
    assert not family_server.events("family.warm_up_failed")
