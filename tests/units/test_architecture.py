"""The architecture holds: layers import downwards only, plugins import only the plugin API."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import nember_core.plugin_api as plugin_api

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contracts_hold():
    """Layers, the plugins' one import, no cycles: pyproject.toml's [tool.importlinter]."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    if sys.version_info < (3, 11):
        pytest.skip("import-linter 2.17 needs Python 3.11; the newer Pythons check this")
    result = subprocess.run([str(lint_imports)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _nember_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] == "nember_core"}


def test_every_plugin_and_the_example_import_only_the_plugin_api():
    files = [*ROOT.glob("plugins/*/*.py"), *ROOT.glob("examples/plugin/nember_*/*.py")]
    assert len(files) >= 10
    for path in files:
        assert _nember_imports(path) <= {"nember_core.plugin_api"}, path


def test_the_examples_tests_import_only_the_plugin_api_and_the_testing_kit():
    files = list(ROOT.glob("examples/plugin/tests/*.py"))
    assert files
    for path in files:
        assert _nember_imports(path) <= {"nember_core.plugin_api", "nember_core.testing"}, path


def test_the_plugin_api_exports_what_it_lists():
    missing = [name for name in plugin_api.__all__ if not hasattr(plugin_api, name)]
    assert not missing
