"""PROTOCOL.md §7: the opt-in request extensions (probabilities, a pinned version, details).

The prepared account's ``example_strategy`` DecisionTree models (class on ``direction``, reg
on ``move``, window 2 over point1 and point2) are trained on ``prices.csv``, whose features
are standard normal draws: a point at 50 lies far outside what the model saw.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import pytest

from nember_core.services import TrainingRequest
from tests.helpers import request

from .conftest import ask, authed

EXISTING = "Existing model data used for prediction"
NEW = "New model configuration added, prediction made"
ORIGINAL = {"type", "seq_num", "message", "prediction"}
INSIDE = [{"point1": 0.3, "point2": -0.2}, {"point1": -0.1, "point2": 0.4}]
OUTSIDE = [{"point1": 50, "point2": -0.2}, {"point1": -0.1, "point2": 0.4}]


async def test_probabilities_name_every_class_sum_to_one_and_agree_with_the_prediction(
        client, prepared):
    ws = await authed(client, prepared.key)
    answer = await ask(ws, request(DataPoints=INSIDE, probabilities=True))
    assert set(answer) == ORIGINAL | {"probabilities"}
    probabilities = answer["probabilities"]
    assert set(probabilities) == {"up", "down"}  # the training data's labels, as strings
    assert sum(probabilities.values()) == pytest.approx(1.0)
    assert all(0.0 <= p <= 1.0 for p in probabilities.values())
    assert answer["prediction"] == max(probabilities, key=probabilities.get)
    plain = await ask(ws, request(DataPoints=INSIDE))
    assert set(plain) == ORIGINAL and plain["prediction"] == answer["prediction"]
    # Asked for, and not: false is the original shape.
    assert set(await ask(ws, request(probabilities=False, details=False))) == ORIGINAL


async def test_details_say_the_version_its_age_and_whether_the_points_are_familiar(
        client, prepared):
    ws = await authed(client, prepared.key)
    inside = await ask(ws, request(DataPoints=INSIDE, details=True, request_id="a"))
    assert set(inside) == ORIGINAL | {"model", "in_distribution", "request_id"}
    model = inside["model"]
    assert set(model) == {"version", "trained_at", "age_seconds"}
    trained_at = datetime.fromisoformat(model["trained_at"].replace("Z", "+00:00"))
    assert trained_at.utcoffset() is not None and model["trained_at"].endswith("Z")
    assert model["age_seconds"] == pytest.approx(time.time() - trained_at.timestamp(), abs=2)
    assert isinstance(model["version"], int) and model["version"] >= 1
    assert inside["in_distribution"] is True
    outside = await ask(ws, request(DataPoints=OUTSIDE, details=True))
    assert outside["in_distribution"] is False
    assert outside["prediction"] in ("up", "down")  # still answered: the bot decides


async def test_a_pinned_version_keeps_answering_after_a_retrain(client, prepared, services):
    ws = await authed(client, prepared.key)
    account = (await services.accounts.by_email("trader@example.com")).id
    first = await services.models.train(account, TrainingRequest(
        strat="pinned", family="DecisionTree", model_type="reg", data=prepared.data,
        target="move", window=1, features=["point1"]))
    v1 = await ask(ws, request(strat_name="pinned", model_type="reg",
                               DataPoints=[{"point1": 0.5}], details=True))
    assert v1["model"]["version"] == first.version
    second = await services.models.train(account, TrainingRequest(
        strat="pinned", family="DecisionTree", model_type="reg", data=prepared.data,
        target="move", window=1, features=["point1"], params={"max_depth": 1}))

    pinned = request(strat_name="pinned", model_type="reg", DataPoints=[{"point1": 0.5}],
                     model_version=first.version, details=True)
    for _ in range(3):  # the newest is picked up by the refresh; the pinned one stays
        answer = await ask(ws, pinned)
        assert answer["type"] == "success", answer
        assert answer["model"]["version"] == first.version
        assert answer["prediction"] == v1["prediction"]
    newest = await ask(ws, request(strat_name="pinned", model_type="reg",
                                   DataPoints=[{"point1": 0.5}], details=True))
    deadline = time.monotonic() + 5
    while newest["model"]["version"] != second.version and time.monotonic() < deadline:
        newest = await ask(ws, request(strat_name="pinned", model_type="reg",
                                       DataPoints=[{"point1": 0.5}], details=True))
    assert newest["model"]["version"] == second.version
    again = await ask(ws, pinned)
    assert (again["model"]["version"], again["message"]) == (first.version, NEW)

    missing = await ask(ws, request(strat_name="pinned", model_type="reg",
                                    DataPoints=[{"point1": 0.5}], model_version=99))
    assert missing == {"type": "error", "seq_num": missing["seq_num"],
                       "message": f"Version 99 of this model does not exist (the newest is "
                                  f"{second.version})."}

    await services.models.delete(account, first.id)  # the pinned version, deleted: gone
    deadline = time.monotonic() + 5
    while (answer := await ask(ws, pinned))["type"] == "success":
        assert time.monotonic() < deadline, "a deleted version still answers"
        await asyncio.sleep(0.02)  # the server's refresh runs every 0.05 s here
    assert answer["message"] == (f"Version {first.version} of this model does not exist "
                                 f"(the newest is {second.version}).")
    unknown = await ask(ws, request(strat_name="nope", model_version=1))
    assert unknown["message"] == "Model configuration not found in the backend."


@pytest.mark.parametrize("changes,message", [
    ({"probabilities": 1}, "Field 'probabilities' must be true or false, got a number."),
    ({"probabilities": "yes"}, "Field 'probabilities' must be true or false, got a string."),
    ({"details": None}, "Field 'details' must be true or false, got null."),
    ({"model_version": "1"},
     "Field 'model_version' must be a whole number of 1 or more, got a string."),
    ({"model_version": 0}, "Field 'model_version' must be a whole number of 1 or more, got 0."),
    ({"model_version": 1.5},
     "Field 'model_version' must be a whole number of 1 or more, got 1.5."),
    ({"model_version": True},
     "Field 'model_version' must be a whole number of 1 or more, got a boolean."),
    ({"model_type": "reg", "probabilities": True},
     "Field 'probabilities' is for class models; this is a reg model."),
])
async def test_a_wrong_extension_is_one_error_naming_the_field(client, prepared, changes,
                                                               message):
    ws = await authed(client, prepared.key)
    answer = await ask(ws, request(request_id=7, **changes))
    assert answer == {"type": "error", "seq_num": 1, "message": message, "request_id": 7}
    assert (await ask(ws, request()))["type"] == "success"  # the connection goes on
