"""Every installed model family passes the testing kit's family contract, as a third
party's must (nember_core/testing/families.py)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from nember_core.plugins import installed_families
from nember_core.testing import FamilyContract


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Parametrizing ``model_family`` directly overrides the suite's fixture of that name.
    if "model_family" in metafunc.fixturenames:
        families = installed_families()
        trainable = sorted(name for name, f in families.items()
                           if getattr(f, "trainable", True))
        metafunc.parametrize("model_family", [families[name] for name in trainable],
                             ids=trainable)


class TestEveryInstalledFamily(FamilyContract):
    pass


BAD_FAMILY = '''
import pickle

from nember_core.plugin_api import ModelFileRejected, Predictor
from nember_core.testing import FamilyContract


class PickledMean:
    """Stores its model as a pickle: loading a file runs whatever the file says."""

    name = "PickledMean"
    library_version = "0.1"
    parameters = {}

    def fit(self, X, y, model_type, params):
        return {"value": float(y.mean()) if model_type == "reg" else 0}

    def dumps(self, model):
        return pickle.dumps(model)

    def loads(self, data, model_type):
        try:
            return pickle.loads(data)
        except Exception:
            raise ModelFileRejected("not a model") from None

    def predictor(self, model, model_type):
        return Predictor(one=lambda row: model["value"])

    def predict(self, model, model_type, X):
        return [model["value"]] * len(X)


class TestPickledMean(FamilyContract):
    family = PickledMean()
'''


def test_a_family_whose_files_can_run_code_fails_the_contract(tmp_path):
    """The suite can fail: a family loading pickles is caught, and says why."""
    (tmp_path / "test_bad_family.py").write_text(BAD_FAMILY)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-o", "asyncio_default_fixture_loop_scope=function",
                          str(tmp_path / "test_bad_family.py")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    failed = re.findall(r"^FAILED \S+::(\w+)", run.stdout, re.MULTILINE)
    assert failed == ["test_a_pickle_is_refused_and_never_runs"], run.stdout
    assert "loading a model file ran code" in run.stdout
