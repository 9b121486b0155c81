"""The model family contract: what every family must do for Nember to train and serve it.

Subclass :class:`FamilyContract` with your family::

    class TestMyFamily(FamilyContract):
        family = MyFamily()
        model_types = ("class", "reg")  # the types it supports

A family that Nember can't train (its models come from elsewhere) overrides
:meth:`FamilyContract.make_model` to build one the way its users would.
"""

from __future__ import annotations

import asyncio
import math
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import numpy as np
import pytest

from nember_core.plugin_api import ModelFamily, ModelFileRejected, Param, Predictor, hookimpl
from nember_core.plugins import plugin_manager
from nember_core.training.dataset import windowed

from .data import FEATURES, TARGETS
from .server import running_server

WINDOW = 3
ROWS = 400
CASES = {"class": ("class", 2), "class, 3 classes": ("class", 3), "reg": ("reg", None)}


def samples(n_classes: int | None, seed: int = 7, features: int = 2,
            rows: int = ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Windowed samples (``WINDOW`` rows of ``features`` columns each, oldest first, as a
    server sends them) and a target a model can learn: class indices 0..n-1, or values."""
    rng = np.random.default_rng(seed)
    series = rng.normal(0, 1, (rows + WINDOW - 1, features))
    X = windowed(series, WINDOW)
    signal = X @ np.linspace(1.0, -0.5, X.shape[1]) + rng.normal(0, 0.2, len(X))
    if n_classes is None:
        return X, signal
    edges = np.quantile(signal, np.linspace(0, 1, n_classes + 1)[1:-1])
    return X, np.searchsorted(edges, signal).astype(np.int64)


def _rows(predictor: Predictor, X: np.ndarray) -> np.ndarray:
    return np.array([predictor.one(X[i : i + 1]) for i in range(len(X))])


class _Trap:
    """A pickle that touches a file when it is unpickled: what a model file must never do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class FamilyContract:
    """The contract suite of a model family; set ``family`` (and ``model_types``)."""

    family: ClassVar[Any] = None  # an instance of the family under test
    model_types: ClassVar[Sequence[str]] = ("class", "reg")
    params: ClassVar[dict[str, Any]] = {}  # the hyperparameters the suite trains with

    def make_model(self, family: ModelFamily, X: np.ndarray, y: np.ndarray,
                   model_type: str) -> Any:
        """A model of the family trained on ``X``, ``y``: by default the family's ``fit``."""
        return family.fit(X, y, model_type, dict(self.params))

    @pytest.fixture
    def model_family(self) -> ModelFamily:
        if self.family is None:
            pytest.fail(f"{type(self).__name__} must set family: an instance of the family")
        return self.family

    @pytest.fixture(params=list(CASES))
    def case(self, request) -> tuple[str, int | None]:
        model_type, n_classes = CASES[request.param]
        if model_type not in self.model_types:
            pytest.skip(f"the family does not support {model_type} models")
        return model_type, n_classes

    @pytest.fixture
    def trained(self, model_family, case):
        """(model_type, X, y, the model as a server loads it from its file)."""
        model_type, n_classes = case
        X, y = samples(n_classes)
        artifact = model_family.dumps(self.make_model(model_family, X, y, model_type))
        return model_type, X, y, model_family.loads(artifact, model_type)

    # --- what a family is -------------------------------------------------------------------

    def test_it_names_itself_and_its_hyperparameters(self, model_family):
        assert isinstance(model_family.name, str) and model_family.name.strip()
        assert model_family.name == model_family.name.strip(), "no spaces around the name"
        assert isinstance(model_family.library_version, str) and model_family.library_version
        for name, param in dict(model_family.parameters).items():
            assert isinstance(name, str) and isinstance(param, Param), name

    def test_it_is_found_by_a_plugin_manager(self, model_family):
        """Registered (installed through its entry point, or as a plugin object) it is
        accepted beside every installed family: every member of the interface is there."""
        names = [f.name for f in _families(model_family)]
        assert names.count(model_family.name) == 1

    # --- files ------------------------------------------------------------------------------

    def test_a_model_file_is_bytes_that_load_to_the_same_predictions(self, model_family, case):
        model_type, n_classes = case
        X, y = samples(n_classes)
        model = self.make_model(model_family, X, y, model_type)
        artifact = model_family.dumps(model)
        assert isinstance(artifact, bytes) and artifact
        loaded = model_family.loads(artifact, model_type)
        _assert_same(model_type, model_family.predict(loaded, model_type, X),
                     model_family.predict(model, model_type, X))

    @pytest.mark.parametrize("junk", [b"", b"\x00" * 64, b"not a model at all",
                                      b"{\"value\": ", bytes(range(256)) * 8],
                             ids=["empty", "zeros", "text", "broken json", "binary"])
    def test_junk_is_refused_as_a_model_file(self, model_family, junk):
        for model_type in self.model_types:
            with pytest.raises(ModelFileRejected):
                model_family.loads(junk, model_type)

    def test_a_pickle_is_refused_and_never_runs(self, model_family, tmp_path):
        """Model files come from users: loading one must never run code."""
        marker = tmp_path / "the pickle ran"
        for protocol in (2, pickle.HIGHEST_PROTOCOL):
            trap = pickle.dumps(_Trap(marker), protocol=protocol)
            for model_type in self.model_types:
                try:
                    model_family.loads(trap, model_type)
                except ModelFileRejected:
                    accepted = False
                else:
                    accepted = True
                assert not marker.exists(), "loading a model file ran code (a pickle)"
                assert not accepted, "loads accepted a pickle: raise ModelFileRejected"

    # --- the fast paths agree with predict --------------------------------------------------

    def test_the_single_row_path_agrees_with_predict(self, model_family, trained):
        model_type, X, _, model = trained
        predictor = model_family.predictor(model, model_type)
        assert isinstance(predictor, Predictor)
        expected = np.asarray(model_family.predict(model, model_type, X))
        assert len(expected) == len(X)
        _assert_same(model_type, _rows(predictor, X), expected)

    def test_the_batch_path_agrees_with_predict(self, model_family, trained):
        model_type, X, _, model = trained
        predictor = model_family.predictor(model, model_type)
        if predictor.many is None:
            pytest.skip("no batch path: batches go through predict")
        expected = np.asarray(model_family.predict(model, model_type, X))
        for rows in (X, X[:1], X[:7]):
            _assert_same(model_type, np.asarray(predictor.many(rows)), expected[: len(rows)])

    def test_the_trees_sums_path_answers_as_the_single_row_path(self, model_family, trained):
        model_type, X, _, model = trained
        predictor = model_family.predictor(model, model_type)
        if predictor.decide is None:
            pytest.skip("no decide: compiled trees are answered through one")
        if predictor.ensemble is None:
            pytest.fail("decide is for tree models: a Predictor with decide needs its ensemble")
        # Exactly the same answers: the server switches between the two paths.
        decided = [predictor.decide(predictor.ensemble.sums(row.tolist())) for row in X]
        assert decided == _rows(predictor, X).tolist()

    def test_probabilities_sum_to_one_and_agree_with_the_class(self, model_family, trained):
        model_type, X, y, model = trained
        if model_type != "class":
            pytest.skip("probabilities are for class models")
        predictor = model_family.predictor(model, model_type)
        if predictor.proba is None:
            pytest.skip("no probabilities: requests asking for them get an error answer")
        got = np.array([predictor.proba(X[i : i + 1]) for i in range(len(X))])
        assert got.shape == (len(X), int(y.max()) + 1), "one probability per class index"
        assert (got >= 0).all()
        np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-6)
        labels = _rows(predictor, X)
        ranked = np.sort(got, axis=1)
        clear = ranked[:, -1] - ranked[:, -2] > 1e-6  # ties within float noise aside
        assert (got.argmax(axis=1)[clear] == labels[clear]).all()

    # --- odd inputs -------------------------------------------------------------------------

    def test_constant_columns_and_a_single_feature_train_and_predict(self, model_family, case):
        model_type, n_classes = case
        X, y = samples(n_classes, features=1)
        X = np.column_stack([X, np.full(len(X), 3.0)])  # a column that never changes
        model = model_family.loads(
            model_family.dumps(self.make_model(model_family, X, y, model_type)), model_type)
        _assert_valid(model_type, n_classes, _rows(model_family.predictor(model, model_type),
                                                   X[:20]))

    def test_extreme_values_get_an_answer(self, model_family, trained, case):
        model_type, X, _, model = trained
        predictor = model_family.predictor(model, model_type)
        width = X.shape[1]
        odd = np.array([[0.0] * width, [1e6] * width, [-1e6] * width, [1e-12] * width,
                        [1e30] * width, [-1e30] * width])
        _assert_valid(model_type, case[1], _rows(predictor, odd))

    # --- served by a real server ------------------------------------------------------------

    def test_it_is_trained_and_served_over_the_websocket(self, model_family, tmp_path):
        """A server with the family registered trains it on a CSV (window 2) and answers a
        bot over ``/ws`` with what the family predicts for that window."""
        if not getattr(model_family, "trainable", True):
            pytest.skip("the family's models are imported, not trained")
        asyncio.run(_serve_and_ask(model_family, self.model_types, self.params, tmp_path))


def _families(family: ModelFamily) -> list[ModelFamily]:
    from nember_core.plugins import collect_families

    pm = plugin_manager(_extra(family))
    return list(collect_families(pm).values())


def _extra(family: ModelFamily) -> list[object]:
    """The family as a plugin object, unless an installed plugin already provides it."""
    from nember_core.plugins import installed_families

    installed = installed_families()
    if installed.get(family.name) is not None and type(installed[family.name]) is type(family):
        return []

    class Registered:
        @hookimpl
        def nember_model_families(self):
            return [family]

    return [Registered()]


async def _serve_and_ask(family: ModelFamily, model_types: Sequence[str],
                         params: dict[str, Any], folder: Path) -> None:
    window = 2
    async with running_server(folder, plugins=_extra(family)) as server:
        async with aiohttp.ClientSession() as session:
            ws = await server.connect(session)
            for model_type in model_types:
                meta = await server.train(family.name, model_type, window=window,
                                          params=params)
                assert meta.features == FEATURES and meta.target == TARGETS[model_type]
                points = [{"point1": 0.5, "point2": -1.25}, {"point1": -0.3, "point2": 0.75}]
                await ws.send_json({"strat_name": "example_strategy", "model_name": family.name,
                                    "model_type": model_type, "DataPoints": points})
                answer = await ws.receive_json(timeout=30)
                assert answer.get("type") == "success", answer
                # What the family predicts from the stored file, for that window.
                stored = await server.services.stores.model_store.read(meta)
                model = family.loads(stored, model_type)
                row = np.array([[p[name] for p in points for name in FEATURES]])
                want = family.predict(model, model_type, row)[0]
                if model_type == "class":
                    assert meta.classes is not None, "a class model keeps its labels"
                    assert answer["prediction"] == meta.classes[int(want)]
                else:
                    assert math.isclose(answer["prediction"], float(want), rel_tol=1e-5,
                                        abs_tol=1e-6)
            await ws.close()


def _assert_same(model_type: str, got, want) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{got.shape} answers where {want.shape} were expected"
    if model_type == "class":
        differ = int((got != want).sum())
        assert differ == 0, f"{differ} of {len(want)} rows get another class"
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _assert_valid(model_type: str, n_classes: int | None, answers: np.ndarray) -> None:
    if model_type == "class":
        assert n_classes is not None
        assert all(float(a).is_integer() and 0 <= int(a) < n_classes for a in answers), answers
    else:
        assert np.isfinite(answers.astype(float)).all(), answers
