"""Python client for Nember's websocket prediction API (``/ws``).

``AsyncClient`` for asyncio code, ``Client`` for everything else; both pipeline requests on
one authenticated connection and reconnect by themselves. See the README for a tour.
"""

from .answers import ModelInfo, Prediction
from .client import AsyncClient
from .errors import (
    AuthenticationError,
    ConnectError,
    ConnectionClosedError,
    ConnectionLimitError,
    ConnectionLostError,
    ModelNotFoundError,
    ModelUnavailableError,
    NemberError,
    PredictionError,
    RateLimitError,
    RequestTimeoutError,
    ServiceUnavailableError,
)
from .sync import Client

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConnectError",
    "ConnectionClosedError",
    "ConnectionLimitError",
    "ConnectionLostError",
    "ModelInfo",
    "ModelNotFoundError",
    "ModelUnavailableError",
    "NemberError",
    "Prediction",
    "PredictionError",
    "RateLimitError",
    "RequestTimeoutError",
    "ServiceUnavailableError",
    "__version__",
]
