"""The README's examples, run as written against `nember demo`, so that they stay true.

The demo runs in a folder laid out like this repository (``config/nember.yaml``, a copy of the
repo's, on a free port; its data in ``var/``; ``.venv`` the running one), and the examples run
there: the websocat session is replayed frame by frame and must get the README's answers
exactly; the curl block runs in bash, word for word but for the port.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.harness import banner_key, free_port, require_service

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PORT = "127.0.0.1:8765"  # the README's address, replaced by the test's


def block_after(marker: str, fence: str = "```") -> str:
    """The text of the first fenced block whose text contains ``marker``."""
    for match in re.finditer(rf"^{fence}[a-z]*\n(.*?)^{fence}$", README, re.S | re.M):
        if marker in match.group(1):
            return match.group(1)
    raise AssertionError(f"README has no fenced block with {marker!r}")


def json_documents(text: str) -> list:
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(text):
        document, at = decoder.raw_decode(text, at)
        found.append(document)
        while at < len(text) and text[at].isspace():
            at += 1
    return found


@pytest.fixture(scope="module")
def demo(tmp_path_factory, module_servers):
    folder = tmp_path_factory.mktemp("readme")
    (folder / "config").mkdir()
    port = free_port()
    config = (ROOT / "config" / "nember.yaml").read_text()
    config = re.sub(r"^(  port:\s*)8765\b", rf"\g<1>{port}", config, count=1, flags=re.M)
    (folder / "config" / "nember.yaml").write_text(config)
    (folder / ".venv").symlink_to(Path(sys.prefix))
    server = module_servers(folder / "config" / "nember.yaml", command="demo")
    return folder, server, banner_key(server)


async def test_the_websocat_session_gets_the_readme_answers(demo):
    _, server, key = demo
    session = block_after("$ websocat").splitlines()
    command = session[0].split()
    assert command[:2] == ["$", "websocat"] and command[2] == f"ws://{PORT}/ws"
    frames = session[1:]
    assert frames[0] == "nmb_..."  # the key the demo printed
    async with aiohttp.ClientSession() as client:
        async with client.ws_connect(server.url) as ws:
            sent = [key, frames[2]]
            for line, answer in zip(sent, frames[1::2], strict=True):
                await ws.send_str(line)
                assert await ws.receive_str(timeout=10) == answer


def test_the_curl_block_runs_as_written(demo):
    folder, server, _ = demo
    require_service(None if shutil.which("jq") else "jq is not installed")
    script = block_after("curl -s").replace(PORT, f"127.0.0.1:{server.port}")
    assert "job_..." not in script and "EMAIL" not in script  # nothing to fill in by hand
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=folder, capture_output=True,
        text=True, timeout=120,
        env={name: value for name, value in os.environ.items() if name != "NEMBER_CONFIG"},
    )
    assert result.returncode == 0, result.stderr
    models, job = json_documents(result.stdout)  # curl adds no newline after each
    demo_models = {(m["strat"], m["model"], m["type"]) for m in models["items"]}
    assert ("example_strategy", "DecisionTree", "class") in demo_models
    assert job["id"].startswith("job_") and job["strat"] == "my_strategy", job
    assert job["state"] in ("queued", "running", "succeeded"), job
