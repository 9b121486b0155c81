"""Fixtures: real `nember` processes on loopback ports, real websocket clients."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import Server, Workspace, run_cli, write_config, write_prices


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A config, an account with one key, and CSV data; no server yet."""
    folder = tmp_path_factory.mktemp("nember")
    config = write_config(folder)
    run_cli(config, "accounts", "create", "trader@example.com")
    key = run_cli(config, "keys", "create", "--account", "trader@example.com").stdout
    data = write_prices(folder / "prices.csv")
    return Workspace(folder, config, key.strip().splitlines()[-1], data)

@pytest.fixture
def servers():
    """Start servers with ``servers(config)``; all are stopped after the test."""
    started: list[Server] = []

    def start(config: Path, command: str = "serve", env: dict | None = None) -> Server:
        server = Server(config, command, env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="module")
def trained(workspace):
    """The workspace with DecisionTree models (class and reg) trained."""
    workspace.train("DecisionTree", "class")
    workspace.train("DecisionTree", "reg")
    return workspace


@pytest.fixture(scope="module")
def server(trained):
    """One `nember serve` for the whole module, on the trained workspace."""
    started = Server(trained.config)
    yield started
    started.kill()
