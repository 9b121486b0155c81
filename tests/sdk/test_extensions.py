"""The opt-in request fields (PROTOCOL.md §7) through the SDK: probabilities, a pinned
model version and details, as typed fields of the Prediction."""

from __future__ import annotations

import time
from datetime import timezone

import pytest
from nember_client import ModelInfo, ModelNotFoundError, PredictionError

from nember_core.services import TrainingRequest

from .conftest import FAMILY, INSIDE, OUTSIDE, STRAT, eventually


async def test_probabilities_name_every_class_sum_to_one_and_agree(sdk):
    answer = await sdk.predict(STRAT, FAMILY, "class", INSIDE, probabilities=True)
    assert set(answer.probabilities) == {"up", "down"}
    assert sum(answer.probabilities.values()) == pytest.approx(1.0)
    assert answer.prediction == max(answer.probabilities, key=answer.probabilities.get)
    assert (answer.model, answer.in_distribution) == (None, None)  # not asked for
    with pytest.raises(PredictionError) as refused:
        await sdk.predict(STRAT, FAMILY, "reg", INSIDE, probabilities=True)
    assert refused.value.message == (
        "Field 'probabilities' is for class models; this is a reg model.")


async def test_details_say_which_version_answered_when_trained_and_if_points_are_familiar(
        sdk):
    inside = await sdk.predict(STRAT, FAMILY, "reg", INSIDE, details=True)
    model = inside.model
    assert isinstance(model, ModelInfo) and model.version == 1
    assert model.trained_at.tzinfo is not None
    assert model.trained_at.utcoffset().total_seconds() == 0
    assert model.trained_at.tzinfo == timezone.utc
    assert model.age_seconds == pytest.approx(time.time() - model.trained_at.timestamp(), abs=2)
    assert inside.in_distribution is True and inside.probabilities is None
    outside = await sdk.predict(STRAT, FAMILY, "reg", OUTSIDE, details=True)
    assert outside.in_distribution is False
    everything = await sdk.predict(STRAT, FAMILY, "class", INSIDE, probabilities=True,
                                   model_version=1, details=True, request_id="all")
    assert everything.model.version == 1 and everything.in_distribution is True
    assert set(everything.probabilities) == {"up", "down"}
    assert everything.request_id == "all"


async def test_a_pinned_version_answers_after_a_retrain_and_a_missing_one_is_an_error(
        sdk, services, prepared):
    account = (await services.accounts.by_email("trader@example.com")).id

    async def train(**params):
        return await services.models.train(account, TrainingRequest(
            strat="pinned", family=FAMILY, model_type="reg", data=prepared.data,
            target="move", window=1, features=["point1"], params=params))

    first = await train()
    point = [{"point1": 0.5}]
    v1 = await sdk.predict("pinned", FAMILY, "reg", point, details=True)
    assert v1.model.version == first.version
    second = await train(max_depth=1)

    async def newest():  # the server notices the retrain within its refresh interval
        answer = await sdk.predict("pinned", FAMILY, "reg", point, details=True)
        return answer if answer.model.version == second.version else None
    assert (await eventually(newest, what="the retrained version")).new_model
    pinned = await sdk.predict("pinned", FAMILY, "reg", point, model_version=first.version,
                               details=True)
    assert (pinned.model.version, pinned.prediction) == (first.version, v1.prediction)

    with pytest.raises(PredictionError) as missing:
        await sdk.predict("pinned", FAMILY, "reg", point, model_version=7, request_id="v7")
    assert not isinstance(missing.value, ModelNotFoundError)
    assert missing.value.message == (
        f"Version 7 of this model does not exist (the newest is {second.version}).")
    assert missing.value.request_id == "v7"
    with pytest.raises(PredictionError) as zero:
        await sdk.predict("pinned", FAMILY, "reg", point, model_version=0)
    assert zero.value.message == "Field 'model_version' must be a whole number of 1 or more, got 0."
