"""The original endpoint documentation's Python client, corrected to check
``status == "success"`` (the original compared ``message`` with ``"valid"``, which never
matches the documented answer). Prints one prediction a second.

    python examples/client.py --url ws://127.0.0.1:8765/ws --key nmb_...
"""

import argparse
import asyncio
import json

import websockets


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
                print("API key verification failed.", flush=True)
                return

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
