"""`nember demo` on a fresh data folder, and the seed's (corrected) example client against it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import banner_key, write_config

pytestmark = pytest.mark.e2e  # real nember processes: `pytest -m e2e`

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_serves_and_the_example_client_prints_predictions(tmp_path, servers):
    config = write_config(tmp_path)
    demo = servers(config, command="demo")
    key = banner_key(demo)
    output = demo.output()
    assert f"Nember demo is serving {demo.url}" in output
    assert f"Dashboard: http://127.0.0.1:{demo.port}/ " in output
    assert f"examples/client.py --url {demo.url} --key {key}" in output
    client = subprocess.Popen(
        [sys.executable, str(ROOT / "examples/client.py"), "--url", demo.url, "--key", key],
        stdout=subprocess.PIPE, text=True,
    )
    lines = []
    deadline = time.monotonic() + 20
    while len(lines) < 3 and time.monotonic() < deadline:
        lines.append(client.stdout.readline().strip())
    client.kill()
    client.wait()
    assert lines[0] == "API key successfully verified!"
    assert lines[1] in ("0", "1") and lines[2] in ("0", "1")  # up (1) or not (0)
    trained = demo.log().count("model.loaded")
    assert trained >= 1
    assert demo.terminate() == 0
    trainings = demo.log().count("demo: training")
    assert trainings >= 6
    # A second run makes nothing new: same key, no training. (Same port: same log file.)
    again = servers(config, command="demo")
    assert banner_key(again, nth=2) == key
    assert again.log().count("demo: training") == trainings
    again.terminate()
    models = list((tmp_path / "data" / "models").rglob("meta.json"))
    assert len(models) >= 6  # DecisionTree, XGBoost and LightGBM at least, class and reg
    assert all(m.parent.name == "v000001" for m in models)


def _client(url: str, key: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "examples/client.py"), "--url", url,
                           "--key", key], capture_output=True, text=True, timeout=30)


def test_the_example_client_says_why_it_stops_with_its_exit_status(server):
    refused = _client(server.url, "nmb_not-a-key")
    assert refused.returncode == 1
    assert refused.stderr.strip() == "API key refused: Invalid API key."
    down = _client("ws://127.0.0.1:9/ws", "nmb_whatever")  # nothing listens on port 9
    assert down.returncode == 2
    assert down.stderr.startswith("Cannot connect to ws://127.0.0.1:9/ws:")
    assert "Traceback" not in down.stderr and len(down.stderr.strip().splitlines()) == 1
