"""A node whose key store, billing, models and jobs live in PostgreSQL (PROTOCOL §5): the CLI
creates the account, key and model there, `nember serve` answers predictions from it, and a
second node with an empty data_dir serves the same model."""

from __future__ import annotations

import aiohttp
import asyncpg
import pytest

from tests.harness import Workspace, run_cli, write_config, write_prices
from tests.helpers import ask, authed, request

pytestmark = pytest.mark.e2e  # real nember processes: `pytest -m e2e`


async def test_a_node_on_postgres_trains_serves_and_charges(postgres_dsn, tmp_path, servers):
    section = {"plugin": "postgres", "dsn": postgres_dsn}
    shared = {"key_store": section, "billing": section, "model_store": section,
              "jobs": section}
    config = write_config(tmp_path / "node-1", server={"node": "node-1"}, **shared)
    run_cli(config, "accounts", "create", "trader@example.com")
    key = run_cli(config, "keys", "create", "--account", "trader@example.com"
                  ).stdout.strip().splitlines()[-1]
    workspace = Workspace(tmp_path / "node-1", config, key, write_prices(tmp_path / "prices.csv"))
    workspace.train("DecisionTree", "class")
    # No model file on this node's disk: the model is in the database.
    assert not list((tmp_path / "node-1" / "data").rglob("model.bin"))

    second = write_config(tmp_path / "node-2", server={"node": "node-2"}, **shared)
    for node in (servers(config), servers(second)):
        async with aiohttp.ClientSession() as session:
            ws = await authed(session, node.url, key)
            answer = await ask(ws, request())
            assert answer == {"type": "success", "seq_num": 1,
                              "message": "New model configuration added, prediction made",
                              "prediction": answer["prediction"]}
            assert answer["prediction"] in ("up", "down")
            await ws.close()

    conn = await asyncpg.connect(postgres_dsn)
    try:
        charges = await conn.fetch("SELECT amount, currency FROM nember_charges")
        usage = await conn.fetchval("SELECT count(*) FROM nember_usage")
    finally:
        await conn.close()
    assert [(str(c["amount"]), c["currency"]) for c in charges] == [("0.01", "USD")] * 2
    assert usage == 2
