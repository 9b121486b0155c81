"""The original endpoint documentation's Python client, corrected to check
``status == "success"`` (the original compared ``message`` with ``"valid"``, which never
matches the documented answer). Prints one prediction a second.

    python examples/client.py --url ws://127.0.0.1:8765/ws --key nmb_...

Exit status: 0 after Ctrl-C, 1 when the key is refused, 2 when the server can't be reached or
closes the connection (its reason printed).
"""

import argparse
import asyncio
import json
import sys

import websockets


class KeyRefused(Exception):
    pass


async def connect(uri, api_key):
    connected = False
    async with websockets.connect(uri) as websocket:
        while True:
            if not connected:
                await websocket.send(api_key)
            else:
                data = {
                    "api_key": api_key,
                    "strat_name": "example_strategy",
                    "model_name": "DecisionTree",
                    "model_type": "class",
                    "DataPoints": [
                        {"point1": 3, "point2": 2},
                        {"point1": 1, "point2": 3},
                    ],
                }
                await websocket.send(json.dumps(data))

            response = await websocket.recv()
            response_data = json.loads(response)

            if not connected and response_data.get("status") == "success":
                print("API key successfully verified!", flush=True)
                connected = True
            elif connected:
                if response_data["type"] == "success":
                    print(response_data["prediction"], flush=True)
                elif response_data["type"] == "error":
                    print(response_data["message"], flush=True)
            else:
                raise KeyRefused(response_data.get("message", "API key verification failed."))

            await asyncio.sleep(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8765/ws")
    parser.add_argument("--key", required=True, help="your API key")
    args = parser.parse_args()
    try:
        asyncio.run(connect(args.url, args.key))
    except KeyboardInterrupt:
        pass
    except KeyRefused as refused:
        sys.exit(f"API key refused: {refused}")  # status 1
    except websockets.ConnectionClosed as closed:
        reason = closed.rcvd.reason if closed.rcvd else "no close frame"
        code = closed.rcvd.code if closed.rcvd else 1006
        print(f"The server closed the connection ({code}: {reason}).", file=sys.stderr)
        sys.exit(2)
    except (OSError, websockets.InvalidURI, websockets.InvalidHandshake) as exc:
        print(f"Cannot connect to {args.url}: {exc}", file=sys.stderr)
        sys.exit(2)
