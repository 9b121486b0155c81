"""The websocket protocol's messages and request parsing (PROTOCOL.md §1 and the opt-in
extensions of §7), nothing else.

Every string here is part of the contract with users' bots: tests compare them exactly.
"""

from __future__ import annotations

from typing import Any

import orjson

from nember_core.credentials import KEY_PREFIX
from nember_core.rules import MAX_NAME, MODEL_TYPES

VALID_KEY = orjson.dumps({"status": "success", "message": "Valid API key."})
INVALID_KEY = orjson.dumps({"status": "error", "message": "Invalid API key."})
LIMIT_REACHED = orjson.dumps(
    {"status": "error", "message": "Connection limit reached for this API key."}
)
UNAVAILABLE = orjson.dumps(  # a store could not be reached (PROTOCOL.md §5)
    {"status": "error", "message": "Service temporarily unavailable, try again later."}
)

NEW_MODEL = "New model configuration added, prediction made"
EXISTING_MODEL = "Existing model data used for prediction"
NOT_FOUND = "Model configuration not found in the backend."
LOAD_FAILED = "The model could not be loaded; try again later."
PROBABILITIES_FOR_CLASS = "Field 'probabilities' is for class models; this is a reg model."
NO_PROBABILITIES = "This model's family gives no class probabilities."

# Close codes (PROTOCOL.md §1.3)
POLICY_VIOLATION = 1008
GOING_AWAY = 1001
TRY_AGAIN_LATER = 1013
CLOSED_BY_OWNER = 4000
KEY_REVOKED = 4401

NO_ID = object()  # the request had no request_id (distinct from "request_id": null)


class RequestError(Exception):
    """A request the server cannot answer with a prediction; the message is sent as it is."""


def success(seq: int, new: bool, prediction: Any, request_id: Any = NO_ID) -> bytes:
    return orjson.dumps(_success(seq, new, prediction, request_id))


_EXISTING = (b'{"type":"success","seq_num":%d,"message":"' + EXISTING_MODEL.encode()
             + b'","prediction":%b}')


def existing(seq: int, prediction: Any) -> bytes:
    """``success(seq, False, prediction)``, byte for byte, without building a dict: the
    answer to almost every frame."""
    return _EXISTING % (seq, orjson.dumps(prediction))


def _success(seq: int, new: bool, prediction: Any, request_id: Any,
             probabilities: dict[str, float] | None = None,
             details: tuple[dict[str, Any], bool | None] | None = None) -> dict[str, Any]:
    """A success answer: the original keys, what the request opted in to (§7) in the
    contract's order, then its request_id."""
    answer = {
        "type": "success",
        "seq_num": seq,
        "message": NEW_MODEL if new else EXISTING_MODEL,
        "prediction": prediction,
    }
    if probabilities is not None:
        answer["probabilities"] = probabilities
    if details is not None:
        answer["model"], answer["in_distribution"] = details
    if request_id is not NO_ID:
        answer["request_id"] = request_id
    return answer


class Extensions:
    """What a request opted in to (PROTOCOL.md §7)."""

    __slots__ = ("probabilities", "version", "details")

    def __init__(self, probabilities: bool, version: int | None, details: bool):
        self.probabilities, self.version, self.details = probabilities, version, details


def extensions(request: dict[str, Any]) -> Extensions | None:
    """The request's §7 options, checked; ``None`` when it asks for none (``false`` flags
    included): its answer has the original shape."""
    if ("probabilities" not in request and "model_version" not in request
            and "details" not in request):
        return None
    probabilities = _flag(request, "probabilities")
    details = _flag(request, "details")
    version = _version(request)
    if not probabilities and not details and version is None:
        return None
    return Extensions(probabilities, version, details)


def _flag(request: dict[str, Any], field: str) -> bool:
    value = request.get(field, False)
    if value is True or value is False:
        return value
    raise RequestError(f"Field '{field}' must be true or false, got {describe(value)}.")


def _version(request: dict[str, Any]) -> int | None:
    value = request.get("model_version", NO_ID)
    if value is NO_ID:
        return None
    if type(value) is int and value >= 1:
        return value
    shown = describe(value)
    if type(value) in (int, float):
        shown = orjson.dumps(value).decode()
    raise RequestError(f"Field 'model_version' must be a whole number of 1 or more, got {shown}.")


def no_such_version(version: int, newest: int) -> str:
    return f"Version {version} of this model does not exist (the newest is {newest})."


def success_extended(seq: int, new: bool, prediction: Any, request_id: Any,
                     probabilities: dict[str, float] | None,
                     details: tuple[dict[str, Any], bool | None] | None) -> bytes:
    """A success answer with what the request opted in to."""
    return orjson.dumps(_success(seq, new, prediction, request_id, probabilities, details))


def error(seq: int, message: str, request_id: Any = NO_ID) -> bytes:
    answer = {"type": "error", "seq_num": seq, "message": message}
    if request_id is not NO_ID:
        answer["request_id"] = request_id
    return orjson.dumps(answer)


def describe(value: Any) -> str:
    """How a wrong value is named in an error: its JSON kind."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def quoted(text: str, limit: int = 40) -> str:
    """A client's string as shown back in an error (and so in the log): quoted and cut short,
    and never an API key pasted in the wrong place."""
    if text.startswith(KEY_PREFIX):
        return "an API key (not repeated)"
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse(text: str | bytes) -> dict[str, Any]:
    try:
        request = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise RequestError(
            "The request is not valid JSON; send one JSON object per text frame "
            "(NaN and Infinity are not JSON)."
        ) from None
    if type(request) is not dict:
        raise RequestError(f"The request must be a JSON object, got {describe(request)}.")
    return request


def request_id(request: dict[str, Any]) -> Any:
    return request.get("request_id", NO_ID)


def request_id_of(text: str | bytes) -> Any:
    """The request_id of a frame not otherwise read (a rate-limited one), if it has one."""
    try:
        request = orjson.loads(text)
    except orjson.JSONDecodeError:
        return NO_ID
    return request.get("request_id", NO_ID) if type(request) is dict else NO_ID


def _name_field(request: dict[str, Any], field: str) -> str:
    value = request.get(field, NO_ID)
    if value is NO_ID:
        raise RequestError(f"Missing field '{field}': expected a non-empty string.")
    if type(value) is not str or not value:
        got = "an empty string" if value == "" else describe(value)
        raise RequestError(f"Field '{field}' must be a non-empty string, got {got}.")
    if len(value) > MAX_NAME:  # no model has such a name: don't look it up, log or keep it
        raise RequestError(
            f"Field '{field}' must have at most {MAX_NAME} characters, got {len(value)}."
        )
    return value


def model_selector(request: dict[str, Any], api_key: str) -> tuple[str, str, str]:
    """Check the request's envelope; return its (strat_name, model_name, model_type)."""
    if "api_key" in request and request["api_key"] != api_key:
        raise RequestError(
            "Field 'api_key' does not match the API key this connection authenticated with."
        )
    strat = _name_field(request, "strat_name")
    family = _name_field(request, "model_name")
    model_type = request.get("model_type", NO_ID)
    if model_type is NO_ID:
        raise RequestError("Missing field 'model_type': expected 'class' or 'reg'.")
    if model_type not in MODEL_TYPES or type(model_type) is not str:
        shown = quoted(model_type) if type(model_type) is str else describe(model_type)
        raise RequestError(f"Field 'model_type' must be 'class' or 'reg', got {shown}.")
    points = request.get("DataPoints", NO_ID)
    if points is NO_ID:
        raise RequestError("Missing field 'DataPoints': expected a list of data point objects.")
    if type(points) is not list:
        raise RequestError(
            f"Field 'DataPoints' must be a list of data point objects, got {describe(points)}."
        )
    return strat, family, model_type
