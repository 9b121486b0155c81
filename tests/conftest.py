"""Fixtures: real `nember` processes on loopback ports, real websocket clients.

Every test and fixture starts its servers through one mechanism: ``servers`` (function scope)
or ``module_servers`` (for module-scoped fixtures). Both kill every process they started when
their scope ends, whether the test passed, failed, or failed while a server was starting.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import Server, Workspace, run_cli, write_config, write_prices

# PostgreSQL and Redis, for the stores several nodes share.
from tests.shared_services import postgres_dsn, redis_prefix, redis_url  # noqa: F401


class ServerStarter:
    """``start(config, command="serve", env=None, kind=Server)`` starts a server and returns
    it once it listens; ``kill_all()`` kills every process started, each one even if killing
    another failed."""

    def __init__(self) -> None:
        self.started: list[Server] = []

    def __call__(self, config: Path, command: str = "serve", env: dict | None = None,
                 kind: type[Server] = Server) -> Server:
        # The process is recorded as soon as it exists, before the wait for it to listen.
        return kind(config, command, env, on_spawn=self.started.append)

    def kill_all(self) -> None:
        failures = []
        for server in reversed(self.started):
            try:
                server.kill()
            except Exception as exc:  # kill the others anyway, then report
                failures.append(exc)
        self.started.clear()
        if failures:
            raise failures[0]


def server_starter(request: pytest.FixtureRequest) -> ServerStarter:
    """A starter whose servers are killed when ``request``'s scope ends; the finalizer is
    registered before anything starts, so no failure can skip it."""
    starter = ServerStarter()
    request.addfinalizer(starter.kill_all)
    return starter


@pytest.fixture
def servers(request) -> ServerStarter:
    """Start servers with ``servers(config)``; all are killed after the test."""
    return server_starter(request)


@pytest.fixture(scope="module")
def module_servers(request) -> ServerStarter:
    """``servers`` for module-scoped fixtures: all are killed after the module."""
    return server_starter(request)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A config, an account with one key, and CSV data; no server yet."""
    folder = tmp_path_factory.mktemp("nember")
    config = write_config(folder)
    run_cli(config, "accounts", "create", "trader@example.com")
    key = run_cli(config, "keys", "create", "--account", "trader@example.com",
                  "--scope", "manage").stdout
    data = write_prices(folder / "prices.csv")
    return Workspace(folder, config, key.strip().splitlines()[-1], data)


@pytest.fixture(scope="module")
def trained(workspace):
    """The workspace with DecisionTree models (class and reg) trained."""
    workspace.train("DecisionTree", "class")
    workspace.train("DecisionTree", "reg")
    return workspace


@pytest.fixture(scope="module")
def server(trained, module_servers):
    """One `nember serve` for the whole module, on the trained workspace."""
    return module_servers(trained.config)
