"""A real Nember server inside the test's event loop, on a loopback port of its own.

It serves ``/ws``, the REST API and the dashboard exactly as ``nember serve`` does, over the
stores the config picks (by default the embedded ones, in a temporary folder) and every
installed plugin, plus any plugin objects the test registers.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import attrs
from aiohttp import web

from nember_core.app.nember import Nember
from nember_core.app.server import WS_PATH, create_app
from nember_core.config import parse_config
from nember_core.plugins import collect_families, collect_providers, plugin_manager
from nember_core.records import ModelMeta
from nember_core.services import Services, TrainingRequest
from nember_core.web import CONTEXT

from .data import FEATURES, TARGETS, write_prices

EMAIL = "plugin-author@example.com"
PASSWORD = "correct horse battery"
VALID_KEY = {"status": "success", "message": "Valid API key."}


@attrs.define
class NemberServer:
    """A started server, an account on it and a ``manage`` key of that account."""

    url: str  # http://127.0.0.1:PORT
    api_key: str
    account_id: str
    services: Services  # the server's own service layer (accounts, keys, models...)
    folder: Path  # the server's files: its config's data_dir is ``folder / "data"``

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + WS_PATH

    async def train(self, family: str, model_type: str, *, strat: str = "example_strategy",
                    window: int = 1, target: str | None = None,
                    features: Sequence[str] | None = None, data: Path | None = None,
                    params: Mapping[str, Any] | None = None) -> ModelMeta:
        """Train and store a model as ``nember train`` would. Without ``data``: the synthetic
        series of :func:`nember_core.testing.data.write_prices` (``point1``, ``point2``;
        target ``direction`` for class, ``move`` for reg)."""
        if data is None:
            data = write_prices(self.folder / "prices.csv")
            features = FEATURES if features is None else features
        request = TrainingRequest(
            strat=strat, family=family, model_type=model_type, data=data,
            target=target or TARGETS[model_type], window=window,
            features=None if features is None else list(features), params=dict(params or {}))
        return await self.services.models.train(self.account_id, request)

    async def connect(self, session: aiohttp.ClientSession,
                      api_key: str | None = None) -> aiohttp.ClientWebSocketResponse[bool]:
        """A websocket that sent the key and was told ``Valid API key.``."""
        ws = await session.ws_connect(self.ws_url)
        await ws.send_str(api_key or self.api_key)
        answer = json.loads(await ws.receive_str(timeout=10))
        if answer != VALID_KEY:
            await ws.close()
            raise AssertionError(f"the server refused the key: {answer}")
        return ws


def _merged(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for name, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(name), dict):
            merged[name] = _merged(merged[name], value)
        else:
            merged[name] = value
    return merged


@contextlib.asynccontextmanager
async def running_server(folder: Path, config: Mapping[str, Any] | None = None,
                         plugins: Sequence[object] = ()) -> AsyncIterator[NemberServer]:
    """Start a server keeping its files in ``folder``; ``config``: sections of the YAML
    config, merged over a loopback default; ``plugins``: plugin objects (modules or
    instances with ``@hookimpl`` methods) registered beside the installed ones."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = _merged({
        "data_dir": "data",
        # Compiling trees would only take the test's CPU: the same answers, later.
        "server": {"host": "127.0.0.1", "port": 0, "compile_trees": False},
        "log": {"level": "warning"},
    }, config or {})
    pm = plugin_manager(plugins)
    providers = collect_providers(pm)
    nember = Nember(pm=pm, config=parse_config(raw, folder / "nember.yaml", providers),
                    providers=providers, families=collect_families(pm))
    runner = web.AppRunner(create_app(nember))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        services = runner.app[CONTEXT].services
        account = await services.accounts.create(EMAIL, PASSWORD)
        key = await services.keys.create(account.id, "testing kit", "manage")
        yield NemberServer(url=f"http://127.0.0.1:{port}", api_key=key.secret,
                           account_id=account.id, services=services, folder=folder)
    finally:
        await runner.cleanup()
