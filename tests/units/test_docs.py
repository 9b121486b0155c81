"""The docs name tests that exist: docs/security.md points at the test of each defence."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_test_the_security_page_names_exists():
    text = (ROOT / "docs" / "security.md").read_text()
    named = re.findall(r"`((?:tests|nember_core/testing)/[\w/]+\.py)(?:::(\w+))?`", text)
    assert len(named) >= 15
    for path, test in named:
        source = (ROOT / path).read_text()
        if test:
            assert re.search(rf"def {test}\b", source), f"{path} has no {test}"
    bare = re.findall(r"`(test_\w+)`", text)  # a test named alone: in the row's test file
    for test in bare:
        assert any(re.search(rf"def {test}\b", p.read_text())
                   for p in (ROOT / "tests").rglob("test_*.py")), test
