"""The documentation site builds with `mkdocs build --strict` (no warning at all: a broken
link, a missing page or a docstring mkdocstrings can't render fails it), and shows what a
reader comes for: every hook, every public name of the plugin API, every config key."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

import nember_core.hookspecs
import nember_core.plugin_api
from nember_core.config import TOP_LEVEL
from tests.harness import require_service

pytestmark = pytest.mark.e2e  # a real `mkdocs build`: `pytest -m e2e`

ROOT = Path(__file__).resolve().parents[2]
# The `docs` extra (also in `test`): skipped without it, a failure in CI.
DOCS_MODULES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _missing_docs_tools() -> str | None:
    missing = [name for name in DOCS_MODULES if find_spec(name.split(".")[0]) is None
               or find_spec(name) is None]
    if missing:
        return f"the docs tools are not installed ({', '.join(missing)}): pip install '.[docs]'"
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once for the module from the repository's mkdocs.yml."""
    require_service(_missing_docs_tools())
    site_dir = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # a banner, not a build warning
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, f"mkdocs build --strict failed:\n{built.stdout}{built.stderr}"
    return site_dir


def page(site: Path, name: str) -> str:
    path = site / name / "index.html"
    assert path.is_file(), f"the site has no {name} page"
    return path.read_text(encoding="utf-8")


def test_the_site_builds_without_a_warning(site):
    assert (site / "index.html").is_file()


def test_the_hook_reference_shows_every_hook(site):
    hooks = [name for name, obj in vars(nember_core.hookspecs).items()
             if name.startswith("nember_") and inspect.isfunction(obj)]
    assert len(hooks) >= 6  # families and the five storage roles, at least
    html = page(site, "hooks")
    missing = [name for name in hooks if f'id="nember_core.hookspecs.{name}"' not in html]
    assert missing == []


def test_the_plugin_api_page_shows_every_public_name(site):
    html = page(site, "plugin-api")
    missing = [name for name in nember_core.plugin_api.__all__
               if f'id="nember_core.plugin_api.{name}"' not in html]
    assert missing == []  # a name added to __all__ needs its `:::` line in docs/plugin-api.md


def test_the_config_page_shows_every_top_level_key(site):
    html = page(site, "config")
    missing = [key for key in sorted(TOP_LEVEL) if f"<code>{key}" not in html]
    assert missing == []


def test_the_protocol_pages_are_there(site):
    assert "/ws" in page(site, "protocol")
    page(site, "websocket-endpoint")
    page(site, "security")


def test_the_home_page_quick_start_is_the_readme_s():
    """The quick start's two commands (install and run the demo; install and run the tests),
    word for word as the README has them."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^```sh\n(.*?)^```$", quick_start, re.S | re.M)[:2]
    assert "nember demo" in commands[0] and "pytest" in commands[1]
    home = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    for command in commands:
        assert f"```sh\n{command}```" in home
