"""wss:// with a certificate made by trustme."""

from __future__ import annotations

import ssl

import aiohttp
import pytest
import trustme

from tests.harness import write_config
from tests.helpers import ask, authed, request

pytestmark = pytest.mark.e2e  # real nember processes: `pytest -m e2e`


@pytest.fixture
def tls_server(trained, tmp_path, servers):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    config = write_config(tmp_path, server={"tls": {"cert": "server.pem", "key": "server.key"}},
                          data_dir=trained.data_dir)
    return servers(config), ca


async def test_wss_connection_with_a_trusted_certificate(tls_server, trained):
    server, ca = tls_server
    assert server.url.startswith("wss://")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with aiohttp.ClientSession() as session:
        ws = await authed(session, server.url, trained.key, ssl=context)
        assert (await ask(ws, request()))["type"] == "success"
        await ws.close()


async def test_wss_refuses_a_client_that_does_not_trust_the_certificate(tls_server):
    server, _ca = tls_server
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.ws_connect(server.url, ssl=ssl.create_default_context())


def test_plain_ws_is_not_served_on_a_tls_port(tls_server):
    server, _ca = tls_server
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        sock.settimeout(5)
        try:
            reply = sock.recv(100)
        except (ConnectionResetError, TimeoutError):
            reply = b""
    assert not reply.startswith(b"HTTP/1.1 101")


async def test_session_cookie_is_secure_under_tls(tls_server, trained):
    from tests.harness import PASSWORD

    server, ca = tls_server
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"https://127.0.0.1:{server.port}/auth/login", ssl=context,
            json={"email": "trader@example.com", "password": PASSWORD},
        ) as response:
            assert response.status == 200
            assert "Secure" in response.headers["Set-Cookie"]
