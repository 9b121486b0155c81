"""A bot that stops reading: the server stops reading its frames too (its buffers stay
bounded), keeps answering everyone else, and drops it when its pings go unanswered (no close
frame can reach a peer that doesn't read: its usage says "connection lost")."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct

from nember_core.app.nember import Nember
from nember_core.app.server import create_app
from tests.harness import write_config
from tests.helpers import request

from .conftest import ask, authed


def _frame(text: str) -> bytes:
    """One masked text frame, as a client sends it."""
    payload = text.encode()
    mask = os.urandom(4)
    size = len(payload)
    header = bytes([0x81]) + (bytes([0x80 | size]) if size < 126
                              else bytes([0x80 | 126]) + struct.pack("!H", size))
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _deaf_bot(port: int, key: str) -> socket.socket:
    """A websocket client that authenticates, then only ever writes."""
    sock = socket.create_connection(("127.0.0.1", port))
    handshake = (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n\r\n")
    sock.sendall(handshake.encode())
    assert b"101" in sock.recv(4096).split(b"\r\n")[0]
    sock.sendall(_frame(key))
    sock.setblocking(False)
    return sock


async def test_a_peer_that_stops_reading_is_dropped_and_others_are_served(
    aiohttp_client, prepared, services, tmp_path
):
    data_dir = Nember.load(str(prepared.config)).config.data_dir
    # Short, to drop the deaf bot soon; not so short that a busy machine misses the pongs
    # of the bot that reads.
    config = write_config(tmp_path, data_dir=data_dir, server={"heartbeat": 2.0})
    client = await aiohttp_client(create_app(Nember.load(str(config))))
    owner = await services.accounts.by_email("other@example.com")
    before = {row.connection_id for row in (await services.usage.report(owner.id)).rows}
    deaf = await asyncio.to_thread(_deaf_bot, client.port, prepared.other_key)
    frame, written = _frame(request()), 0
    try:
        for _ in range(100):  # write until the server stops reading (its buffers are full)
            try:
                while True:
                    written += deaf.send(frame)
            except BlockingIOError:
                break
            await asyncio.sleep(0.01)
        assert written > 0
        # Meanwhile, while it is still connected, everyone else is answered.
        ws = await authed(client, prepared.key)
        for seq in range(1, 21):
            assert (await ask(ws, request()))["seq_num"] == seq
        headers = {"Authorization": f"Bearer {prepared.other_key}"}
        listed = await (await client.get("/api/connections", headers=headers)).json()
        assert len(listed["items"]) == 1  # the deaf bot, not dropped yet
        # The deaf bot is dropped: unlisted, its usage closed as a lost connection.
        for _ in range(200):
            rows = [row for row in (await services.usage.report(owner.id)).rows
                    if row.connection_id not in before]
            if rows and rows[0].closed_at is not None:
                break
            await asyncio.sleep(0.1)
        (row,) = rows
        assert row.closed_at is not None and row.close_reason == "connection lost"
        assert row.errors > 0  # it was answered until it stopped reading (this account has
        # no model: every answer is an error, which costs the server as much)
    finally:
        deaf.close()
