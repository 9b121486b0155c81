"""``nember demo``: a sample account, key and models on the embedded default, then serve.

Everything is made once and reused on the next run: the sample price series, the models
(every installed family Nember trains, ``class`` and ``reg``, window 2 over ``point1`` and
``point2``; families whose models are imported, such as ONNX, have none), the
account and its key. The key is kept in ``data_dir/demo-credentials.json`` (mode 0600) so the
demo can print it again; real keys are only ever stored hashed.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from pathlib import Path

import numpy as np

from nember_core.errors import AlreadyExists
from nember_core.records import ModelKey
from nember_core.services import Services, TrainingRequest

from .nember import Nember
from .progress import ProgressBar

EMAIL = "demo@nember.local"
STRAT = "example_strategy"
WINDOW = 2
ROWS = 1500


def write_prices(path: Path, rows: int = ROWS, seed: int = 7) -> None:
    """A reproducible random-walk price series and two features a bot might compute.

    point1: the last tick's return in basis points; point2: the distance of the price from its
    10-tick mean, in basis points. Targets: whether the next tick goes up (1) or not (0), and
    the next tick's return in basis points.
    """
    rng = np.random.default_rng(seed)
    returns = rng.normal(0.0, 0.001, rows + 11) + 0.0003 * np.sin(np.arange(rows + 11) / 15)
    prices = 100.0 * np.cumprod(1.0 + returns)
    lines = ["tick,price,point1,point2,direction,next_return"]
    for t in range(10, rows + 10):
        point1 = (prices[t] / prices[t - 1] - 1.0) * 1e4
        point2 = (prices[t] / prices[t - 9 : t + 1].mean() - 1.0) * 1e4
        next_return = (prices[t + 1] / prices[t] - 1.0) * 1e4
        direction = 1 if next_return > 0 else 0
        lines.append(
            f"{t - 10},{prices[t]:.4f},{point1:.4f},{point2:.4f},{direction},{next_return:.4f}"
        )
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


async def prepare(nember: Nember, services: Services) -> dict[str, str]:
    """Make (or find) the demo's data, account, key and models; return the credentials."""
    data_dir = nember.config.data_dir
    prices = data_dir / "demo" / "prices.csv"
    if not prices.exists():
        prices.parent.mkdir(parents=True, exist_ok=True)
        write_prices(prices)

    store = data_dir / "demo-credentials.json"
    saved = json.loads(store.read_text()) if store.exists() else {}
    password = saved.get("password") or secrets.token_urlsafe(12)
    try:
        await services.accounts.create(EMAIL, password)
    except AlreadyExists:
        pass
    account = await services.accounts.by_email(EMAIL)
    key = saved.get("key")
    if not key or await services.keys.authenticate(key) is None:
        key = (await services.keys.create(account.id, "demo")).secret
    credentials = {"email": EMAIL, "password": password, "key": key}
    if credentials != saved:
        tmp = store.with_suffix(".tmp")
        tmp.touch(mode=0o600)
        tmp.write_text(json.dumps(credentials, indent=2))
        os.replace(tmp, store)

    trained = sorted(name for name, family in nember.families.items()
                     if getattr(family, "trainable", True))  # imported families: no demo
    for family in trained:
        for model_type, target in (("class", "direction"), ("reg", "next_return")):
            if await services.models.latest(ModelKey(account.id, STRAT, family, model_type)):
                continue
            print(f"demo: training {family} {model_type}...", file=sys.stderr, flush=True)
            bar = ProgressBar(f"demo: {family} {model_type}")
            try:
                await services.models.train(account.id, TrainingRequest(
                    strat=STRAT, family=family, model_type=model_type, data=prices,
                    target=target, window=WINDOW, features=["point1", "point2"],
                ), bar)
            finally:
                bar.close()
    return credentials


def banner(credentials: dict[str, str], url: str) -> str:
    key = credentials["key"]
    site = url.replace("ws", "http", 1).removesuffix("ws")
    request = json.dumps({
        "strat_name": STRAT, "model_name": "DecisionTree", "model_type": "class",
        "DataPoints": [{"point1": 3, "point2": 2}, {"point1": 1, "point2": 3}],
    })
    return "\n".join([
        "",
        f"Nember demo is serving {url}",
        f"  account: {credentials['email']} (password: {credentials['password']})",
        f"  API key: {key}",
        f"  models:  strategy {STRAT!r}, every installed family it trains, class and reg, "
        "window 2",
        "",
        f"Dashboard: {site}  (log in with the account above)",
        "",
        "Try it (in another terminal, from the project folder):",
        f"  .venv/bin/python examples/client.py --url {url} --key {key}",
        "or by hand with websocat:",
        f"  websocat {url}",
        f"  then paste the key, then: {request}",
        "",
        "Stop with Ctrl-C.",
        "",
    ])


def run_demo(nember: Nember, host: str | None, port: int | None) -> None:
    from .server import serve

    async def setup() -> dict[str, str]:
        async with nember.services() as services:
            return await prepare(nember, services)

    credentials = asyncio.run(setup())
    serve(
        nember, host, port,
        ready=lambda url: print(banner(credentials, url), file=sys.stdout, flush=True),
    )
