"""The original endpoint documentation's Python client, on Nember's Python SDK. Prints one
prediction a second.

It needs the SDK (sdk/python in this repository), installed once from a checkout:

    pip install ./sdk/python
    python examples/client.py --url ws://127.0.0.1:8765/ws --key nmb_...

The SDK checks the key's answer for ``status == "success"`` (the original compared
``message`` with ``"valid"``, which never matches the documented answer) and reconnects by
itself when the server restarts.

Exit status: 0 after Ctrl-C, 1 when the key is refused, 2 when the server can't be reached or
closes the connection for good (its reason printed), 3 when the SDK is not installed.
"""

import argparse
import asyncio
import sys

try:
    from nember_client import (
        AsyncClient,
        AuthenticationError,
        ConnectError,
        ConnectionClosedError,
        ConnectionLimitError,
        ConnectionLostError,
        PredictionError,
        ServiceUnavailableError,
    )
except ImportError:
    print("examples/client.py needs Nember's Python SDK: pip install ./sdk/python",
          file=sys.stderr)
    sys.exit(3)

POINTS = [{"point1": 3, "point2": 2}, {"point1": 1, "point2": 3}]


async def run(url, api_key):
    async with AsyncClient(url, api_key) as client:
        print("API key successfully verified!", flush=True)
        while True:
            try:
                answer = await client.predict("example_strategy", "DecisionTree", "class",
                                              POINTS)
                print(answer.prediction, flush=True)
            except PredictionError as error:  # the server's sentence; the connection stays
                print(error.message, flush=True)
            except ConnectionLostError as lost:  # the SDK is reconnecting meanwhile
                print(lost, file=sys.stderr, flush=True)
            await asyncio.sleep(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8765/ws")
    parser.add_argument("--key", required=True, help="your API key")
    args = parser.parse_args()
    try:
        asyncio.run(run(args.url, args.key))
    except KeyboardInterrupt:
        pass
    except (AuthenticationError, ConnectionLimitError) as refused:
        sys.exit(f"API key refused: {refused.message}")  # status 1
    except ConnectError as failed:  # "Cannot connect to URL: why", on one line
        print(failed, file=sys.stderr)
        sys.exit(2)
    except ConnectionClosedError as closed:  # by its owner (4000), key revoked (4401), ...
        print(f"The server closed the connection ({closed.code}: {closed.reason}).",
              file=sys.stderr)
        sys.exit(2)
    except ServiceUnavailableError as unavailable:
        print(f"The server closed the connection (1013: {unavailable.message})",
              file=sys.stderr)
        sys.exit(2)
