"""`nember plugins`: every plugin found, its package and version, its hooks and what it provides;
a plugin that can't be used is listed with its error, and the others still are."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from nember_core.app import cli

BASELINE = Path(__file__).resolve().parents[2] / "examples/plugin/nember_baseline/__init__.py"

BROKEN = {
    # entry point: (distribution, module source)
    "broken_import": ("nember-broken", "import nowhere_to_be_found\n"),
    "misspelt": ("nember-misspelt", textwrap.dedent("""\
        from nember_core.plugin_api import hookimpl

        @hookimpl
        def nember_model_familes():
            return []
        """)),
    "half_family": ("nember-half", textwrap.dedent("""\
        from nember_core.plugin_api import hookimpl

        class Half:
            name = "Half"

        @hookimpl
        def nember_model_families():
            return [Half()]
        """)),
}


def install(site: Path, entry_point: str, distribution: str, source: str) -> None:
    """Lay a plugin out as pip installs one: its module and a dist-info with its entry point."""
    module = f"{entry_point}_plugin"
    (site / f"{module}.py").write_text(source)
    info = site / f"{distribution.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\n"
                                   "Version: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[nember]\n{entry_point} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    install(site, "baseline", "nember-baseline", BASELINE.read_text())
    for entry_point, (distribution, source) in BROKEN.items():
        install(site, entry_point, distribution, source)
    monkeypatch.syspath_prepend(str(site))
    return site


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["plugins", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_plugin_is_listed_with_its_package_hooks_and_what_it_provides(capsys, site):
    code, out, err = run(capsys)
    assert textwrap.dedent("""\
        baseline  baseline_plugin (nember-baseline 1.2.3)
          hooks: nember_model_families
          provides: model family Baseline
        """) in out
    assert textwrap.dedent("""\
        sqlite  nember_sqlite (nember 0.1.0)
          hooks: nember_billing_ledgers, nember_connection_registries, nember_job_boards, nember_key_stores
          provides: billing sqlite (default), connection_registry sqlite (default), jobs sqlite (default), key_store sqlite (default)
        """) in out  # noqa: E501
    assert "  provides: model family DecisionTree, model family RandomForest" in out


def test_a_plugin_that_cant_be_used_is_listed_with_its_error(capsys, site):
    code, out, err = run(capsys)
    assert code == 1
    assert ("broken_import  broken_import_plugin (nember-broken 1.2.3)\n"
            "  error: the plugin 'broken_import' (broken_import_plugin) failed to load: "
            "No module named 'nowhere_to_be_found'\n") in out
    assert ("misspelt  misspelt_plugin (nember-misspelt 1.2.3)\n"
            "  error: it implements nember_model_familes, which is no Nember hook "
            "(misspelt?)\n") in out
    assert ("half_family  half_family_plugin (nember-half 1.2.3)\n"
            "  error: the model family 'Half' lacks library_version, parameters, fit, dumps, "
            "loads, predictor, predict (see nember_core.plugin_api.ModelFamily)\n") in out
    assert err == "3 of the plugins can't be used: see their errors above\n"
    assert "Traceback" not in out + err


def test_the_listing_as_json(capsys, site):
    code, out, _ = run(capsys, "--json")
    listed = {plugin["name"]: plugin for plugin in json.loads(out)}
    assert listed["baseline"] == {
        "name": "baseline", "target": "baseline_plugin", "distribution": "nember-baseline",
        "version": "1.2.3", "hooks": ["nember_model_families"],
        "provides": ["model family Baseline"], "error": None}
    assert listed["broken_import"]["error"].endswith("No module named 'nowhere_to_be_found'")
    assert code == 1


def test_without_broken_plugins_it_exits_0(capsys):
    code, out, err = run(capsys)
    assert code == 0 and err == ""
    assert "xgboost  nember_xgboost (nember 0.1.0)" in out
