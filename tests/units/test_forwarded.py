"""Which address a request is believed to come from, behind trusted proxies or not."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from nember_core.config import load_config
from nember_core.plugins import collect_providers, plugin_manager
from nember_core.web.forwarded import client_address

PROXIES = [ipaddress.ip_network("127.0.0.1"), ipaddress.ip_network("10.0.0.0/8")]
EXAMPLES = Path(__file__).parents[2] / "examples" / "cluster"


@pytest.mark.parametrize(("remote", "header", "believed"), [
    ("127.0.0.1", "203.0.113.7", "203.0.113.7"),  # nginx on this machine
    ("10.1.2.3", "203.0.113.7, 10.9.9.9", "203.0.113.7"),  # two proxies of ours
    ("127.0.0.1", "6.6.6.6, 203.0.113.7", "203.0.113.7"),  # the client's own entry: ignored
    ("198.51.100.1", "203.0.113.7", "198.51.100.1"),  # not a proxy of ours: not believed
    ("127.0.0.1", None, "127.0.0.1"),
    ("127.0.0.1", "not-an-address", "127.0.0.1"),
    ("127.0.0.1", "10.0.0.5", "127.0.0.1"),  # nothing but proxies
    ("127.0.0.1", " 2001:db8::1 ", "2001:db8::1"),
])
def test_only_a_trusted_proxys_header_is_believed(remote, header, believed):
    assert client_address(remote, header, PROXIES) == believed


def test_without_trusted_proxies_every_request_keeps_its_own_address():
    assert client_address("127.0.0.1", "203.0.113.7", []) == "127.0.0.1"


def test_the_example_node_config_is_valid():
    config = load_config(str(EXAMPLES / "nember-node.yaml"), collect_providers(plugin_manager()))
    assert config.server.trusted_proxies == ("127.0.0.1",)
    assert config.key_store.plugin == "postgres" and config.connection_registry.plugin == "redis"
