"""Behind a trusted reverse proxy, connections, usage and logins see the bot's address."""

from __future__ import annotations

import yaml

from nember_core.app.nember import Nember
from nember_core.app.server import create_app
from tests.harness import write_config

from .conftest import VALID_KEY

BOT = "203.0.113.7"


def _app(prepared, folder, **server):
    data_dir = Nember.load(str(prepared.config)).config.data_dir
    config = write_config(folder, data_dir=data_dir, server=server)
    return create_app(Nember.load(str(config)))


async def _listed_remotes(client, key: str, headers: dict) -> list[str]:
    ws = await client.ws_connect("/ws", headers=headers)
    await ws.send_str(key)
    assert await ws.receive_json(timeout=5) == VALID_KEY
    async with client.get("/api/connections",
                          headers={"Authorization": f"Bearer {key}"}) as response:
        listed = [c["remote"] for c in (await response.json())["items"]]
    await ws.close()
    return listed


async def test_a_trusted_proxys_forwarded_address_is_the_connections(aiohttp_client, prepared,
                                                                     tmp_path):
    client = await aiohttp_client(_app(prepared, tmp_path, trusted_proxies=["127.0.0.1"]))
    listed = await _listed_remotes(client, prepared.key, {"X-Forwarded-For": f"6.6.6.6, {BOT}"})
    assert listed == [BOT]  # the proxy's own entry, not the one the bot wrote itself


async def test_without_trusted_proxies_the_header_is_ignored(aiohttp_client, prepared,
                                                             tmp_path):
    assert yaml.safe_load(prepared.config.read_text())["server"].get("trusted_proxies") is None
    client = await aiohttp_client(_app(prepared, tmp_path))
    listed = await _listed_remotes(client, prepared.key, {"X-Forwarded-For": BOT})
    assert listed == ["127.0.0.1"]
