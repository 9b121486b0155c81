"""The floor: a bare aiohttp websocket server on the same stack as Nember, echoing each frame.

    python benchmarks/echo_server.py PORT [uvloop]

Same library, same event loop, same websocket settings (no compression, a heartbeat, the
same maximum frame size); it answers the first frame like an authentication and every other
frame with the frame itself. Nember's cost is measured against this.
"""

from __future__ import annotations

import sys

from aiohttp import WSMsgType, web

OK = b'{"status":"success","message":"Valid API key."}'


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=65536, compress=False)
    await ws.prepare(request)
    first = await ws.receive()
    if first.type is not WSMsgType.TEXT:
        return ws
    await ws.send_frame(OK, WSMsgType.TEXT)
    receive, send = ws.receive, ws.send_frame
    while True:
        msg = await receive()
        if msg.type is not WSMsgType.TEXT:
            return ws
        await send(msg.data.encode(), WSMsgType.TEXT)


def main() -> None:
    app = web.Application()
    app.router.add_get("/ws", echo)
    loop = None
    if sys.argv[2:] == ["uvloop"]:  # the same event loop as the Nember it is compared with
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None,
                loop=loop)


if __name__ == "__main__":
    main()
