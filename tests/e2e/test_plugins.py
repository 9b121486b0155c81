"""Plugins: a third party's family found through its entry point, and the hook docs."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from nember_core import hookspecs
from tests.harness import run_cli
from tests.helpers import ask, authed

pytestmark = pytest.mark.e2e  # real nember processes: `pytest -m e2e`

ROOT = Path(__file__).resolve().parents[2]


def install_example_plugin(target: Path) -> dict:
    """Lay out examples/plugin as an installed distribution would: module + dist-info."""
    shutil.copytree(ROOT / "examples/plugin/nember_baseline", target / "nember_baseline")
    info = target / "nember_baseline-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nember-baseline\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[nember]\nbaseline = nember_baseline\n")
    return {"PYTHONPATH": str(target)}


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    return install_example_plugin(tmp_path_factory.mktemp("site"))


def test_third_party_family_is_listed(workspace, plugin_env):
    listed = run_cli(workspace.config, "families", env=plugin_env).stdout
    assert "Baseline\tnember-baseline 0.1.0" in listed
    assert "Baseline" not in run_cli(workspace.config, "families").stdout


async def test_third_party_family_trains_and_serves(workspace, plugin_env, servers):
    out = run_cli(
        workspace.config, "train", "--account", "trader@example.com", "--strat", "third",
        "--model", "Baseline", "--type", "reg", "--data", str(workspace.data),
        "--target", "move", "--features", "point1", env=plugin_env,
    ).stdout
    assert out.startswith("Trained Baseline reg")
    import csv

    with open(workspace.data) as handle:
        moves = [float(row["move"]) for row in csv.DictReader(handle)]
    server = servers(workspace.config, env=plugin_env)
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, workspace.key)
        answer = await ask(ws, {"strat_name": "third", "model_name": "Baseline",
                                "model_type": "reg", "DataPoints": [{"point1": 1.5}]})
        assert answer["prediction"] == pytest.approx(sum(moves) / len(moves))
        await ws.close()


def test_every_hook_is_documented_in_the_readme_with_its_signature():
    readme = (ROOT / "README.md").read_text()
    hooks = [name for name in dir(hookspecs) if name.startswith("nember_")]
    assert len(hooks) >= 5
    for name in hooks:
        function = getattr(hookspecs, name)
        assert function.__doc__ and function.__doc__.strip(), f"{name} has no docstring"
        signature = f"{name}{inspect.signature(function)}".replace("'", "")
        assert re.search(re.escape(signature), readme), f"README lacks `{signature}`"


def test_first_party_plugins_are_registered_through_the_entry_point_group():
    from importlib.metadata import entry_points

    names = {ep.value for ep in entry_points(group="nember")}
    assert {"nember_sqlite", "nember_local_disk", "nember_memory_registry", "nember_sklearn",
            "nember_xgboost", "nember_lightgbm"} <= names


def test_the_example_plugin_passes_its_own_tests_with_the_testing_kit(tmp_path):
    """As its author would: pip installs the package (entry point and all), and its own
    `pytest` runs the kit's family contract and its server test, in its own pytest config."""
    project, site = tmp_path / "nember-baseline", tmp_path / "site"
    shutil.copytree(ROOT / "examples/plugin", project)  # the build leaves files beside it
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(project)], check=True, timeout=600, capture_output=True)
    shutil.rmtree(project / "nember_baseline")  # the tests must use the installed package
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v"],
                         cwd=project, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(site)}, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    for test in ("TestBaseline::test_a_pickle_is_refused_and_never_runs",
                 "TestBaseline::test_it_is_trained_and_served_over_the_websocket",
                 "test_a_bot_gets_the_mean_move_whatever_it_sends"):
        assert re.search(rf"{test}\S* PASSED", run.stdout), f"{test} did not pass:\n{run.stdout}"
