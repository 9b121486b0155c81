"""What can go wrong, as exceptions a bot can catch by kind.

Every exception derives from :class:`NemberError`. The server's own messages are kept
verbatim in ``message``: they are part of Nember's protocol and say what to fix.
"""

from __future__ import annotations

from typing import Any

# The server's messages that pick an exception class (docs/protocol.md §1.1 and §5).
INVALID_KEY = "Invalid API key."
LIMIT_REACHED = "Connection limit reached for this API key."
UNAVAILABLE = "Service temporarily unavailable, try again later."
NOT_FOUND = "Model configuration not found in the backend."
LOAD_FAILED = "The model could not be loaded; try again later."
RATE_LIMITED = "Rate limit exceeded"


class NemberError(Exception):
    """The base of every error this package raises.

    Each keeps its constructor's arguments in ``args``, so that it pickles and copies.
    """


class ConnectError(NemberError):
    """The websocket could not be opened: nothing listens there, TLS or the HTTP upgrade
    failed, the handshake timed out, or the server hung up before answering the key."""

    def __init__(self, url: str, reason: str):
        # One line: a bot's log (or the example client's stderr) shows it as it is.
        self.url, self.reason = url, " ".join(reason.split())
        super().__init__(url, reason)

    def __str__(self) -> str:
        return f"Cannot connect to {self.url}: {self.reason}"


class AuthenticationError(NemberError):
    """The server refused the API key (unknown, revoked, ...). Never retried: a refused key
    stays refused, and hammering the server with it would only fill its logs."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


class ConnectionLimitError(NemberError):
    """The key is valid, but its account has as many live connections as it may."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


class ServiceUnavailableError(NemberError):
    """The server could not check the key right now (one of its stores is down; close code
    1013). Worth trying again a little later."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


class ConnectionLostError(NemberError):
    """The connection dropped while this request waited for its answer, or none came back
    up in time. The request may or may not have been answered: it is not resent by itself,
    so that the caller decides (a prediction is cheap to ask again)."""

    def __init__(self, message: str, code: int | None = None, reason: str = ""):
        self.message, self.code, self.reason = message, code, reason
        super().__init__(message, code, reason)

    def __str__(self) -> str:
        return self.message


class ConnectionClosedError(NemberError):
    """The connection was closed for good: by its owner (4000), because its key was revoked
    (4401), for a policy violation (1008), or by :meth:`close`. The client does not
    reconnect after it; every later call raises it again."""

    def __init__(self, code: int, reason: str):
        self.code, self.reason = code, reason
        super().__init__(code, reason)

    def __str__(self) -> str:
        return f"connection closed ({self.code}{': ' + self.reason if self.reason else ''})"


class RequestTimeoutError(NemberError, TimeoutError):
    """No answer within ``request_timeout`` seconds (the connection still looked alive)."""


class PredictionError(NemberError):
    """The server answered the request with an error; the connection stays usable.

    ``message`` is the server's sentence, naming the field and what was expected.
    """

    def __init__(self, message: str, seq_num: int | None, request_id: Any):
        self.message, self.seq_num, self.request_id = message, seq_num, request_id
        super().__init__(message, seq_num, request_id)

    def __str__(self) -> str:
        return self.message


class ModelNotFoundError(PredictionError):
    """The account has no trained model for (strategy, family, type)."""


class ModelUnavailableError(PredictionError):
    """The model exists but could not be loaded on the server; it tries again after a
    backoff, so asking again later may work."""


class RateLimitError(PredictionError):
    """Over the connection's message rate: slow down (or spread over connections)."""


def prediction_error(message: str, seq_num: int | None, request_id: Any) -> PredictionError:
    """The exception for a server's error answer: the class its message calls for."""
    if message == NOT_FOUND:
        kind: type[PredictionError] = ModelNotFoundError
    elif message == LOAD_FAILED:
        kind = ModelUnavailableError
    elif message.startswith(RATE_LIMITED):
        kind = RateLimitError
    else:
        kind = PredictionError
    return kind(message, seq_num, request_id)


def refusal(message: str) -> NemberError:
    """The exception for the server's error answer to an API key."""
    if message == LIMIT_REACHED:
        return ConnectionLimitError(message)
    if message == UNAVAILABLE:
        return ServiceUnavailableError(message)
    return AuthenticationError(message)
