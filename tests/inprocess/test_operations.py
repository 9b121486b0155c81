"""The operations endpoints: /healthz, /readyz naming a failing store, /metrics in Prometheus
text format with nothing in a label that names a tenant."""

from __future__ import annotations

import shutil

from prometheus_client.parser import text_string_to_metric_families

from nember_core.app.nember import Nember
from nember_core.app.server import create_app
from tests.harness import write_config
from tests.helpers import request

from .conftest import ask, authed


async def scrape(client) -> dict[tuple[str, tuple], float]:
    """Every sample of GET /metrics by (name, sorted labels)."""
    async with client.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def delta(before: dict, after: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_healthz_and_readyz_answer_and_no_header_names_a_library(client):
    async with client.get("/healthz") as response:
        assert (response.status, await response.json()) == (200, {"status": "ok"})
        assert response.headers["Server"] == "Nember"
    async with client.get("/readyz") as response:
        assert (response.status, await response.json()) == (200, {"status": "ready",
                                                                   "failing": []})
    ws = await client.ws_connect("/ws")
    assert ws._response.headers["Server"] == "Nember"  # the upgrade's answer too
    await ws.close()


async def test_readyz_names_the_store_that_does_not_answer_then_recovers(client, nember):
    models = nember.config.data_dir / "models"
    moved = models.with_name("models-away")
    models.rename(moved)
    try:
        async with client.get("/readyz") as response:
            assert response.status == 503
            assert await response.json() == {
                "status": "unavailable", "failing": ["model_store"],
                "error": "Not ready: model_store not answering."}
    finally:
        moved.rename(models)
    async with client.get("/readyz") as response:
        assert response.status == 200


async def test_metrics_count_what_bots_did(client, prepared):
    before = await scrape(client)
    ws = await authed(client, prepared.key)
    assert (await ask(ws, request()))["type"] == "success"
    assert (await ask(ws, request()))["type"] == "success"
    assert (await ask(ws, "not json"))["type"] == "error"
    refused = await client.ws_connect("/ws")
    await refused.send_str("nmb_wrong")
    await refused.receive()
    await refused.close()
    during = await scrape(client)
    assert during[("nember_connections_open", ())] >= 1
    assert delta(before, during, "nember_predictions_total", family="DecisionTree",
                 model_type="class") == 2
    assert delta(before, during, "nember_request_errors_total") == 1
    assert delta(before, during, "nember_prediction_seconds_count") == 3
    assert delta(before, during, "nember_prediction_seconds_bucket", le="+Inf") == 3
    assert delta(before, during, "nember_authentications_total", result="accepted") == 1
    assert delta(before, during, "nember_authentications_total", result="invalid_key") == 1
    assert ("nember_event_loop_lag_seconds", ()) in during
    await ws.close()


async def test_no_label_names_an_account_key_strategy_or_address(client, prepared):
    ws = await authed(client, prepared.key)
    await ask(ws, request())
    async with client.get("/metrics") as response:
        text = await response.text()
    for secret in ("example_strategy", "acct_", "key_", prepared.key, "127.0.0.1", "@"):
        assert secret not in text
    await ws.close()


async def test_metrics_can_be_turned_off(aiohttp_client, prepared, tmp_path):
    data_dir = Nember.load(str(prepared.config)).config.data_dir
    config = write_config(tmp_path, data_dir=data_dir, server={"metrics": False})
    client = await aiohttp_client(create_app(Nember.load(str(config))))
    async with client.get("/metrics") as response:
        assert response.status == 404
    async with client.get("/healthz") as response:
        assert response.status == 200


async def test_a_missing_model_folder_is_not_recreated_by_readyz(client, nember):
    # readyz only asks: it must not paper over a store's problem by creating things.
    models = nember.config.data_dir / "models"
    shutil.copytree(models, models.with_name("models-copy"))
    shutil.rmtree(models)
    try:
        async with client.get("/readyz") as response:
            assert response.status == 503
        assert not models.exists()
    finally:
        models.with_name("models-copy").rename(models)


async def test_the_grafana_dashboard_asks_only_for_series_the_server_exports(client, prepared):
    import json
    import re
    from pathlib import Path

    ws = await authed(client, prepared.key)
    await ask(ws, request())
    exported = {name for name, _ in await scrape(client)} | {"up"}
    dashboard = json.loads((Path(__file__).parents[2] / "examples" / "grafana"
                            / "nember-dashboard.json").read_text())
    asked = {name for panel in dashboard["panels"] for target in panel["targets"]
             for name in re.findall(r"\b(nember_\w+|up)\b(?=[{\[)\s])", target["expr"])}
    assert asked and asked <= exported, asked - exported
    await ws.close()
