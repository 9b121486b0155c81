"""The rules a name, a window or a model type must meet, written once.

The service layer checks them for the CLI, the REST API and the dashboard alike; the protocol
and training use the same limits. A broken rule raises :class:`InvalidData` with a message
that says what is expected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import InvalidData

if TYPE_CHECKING:
    from .plugin_api import Param

MODEL_TYPES = ("class", "reg")
# What an API key may do, each including the ones before it (PROTOCOL.md §3): open /ws; and
# the REST API's GET routes; and every REST route.
SCOPES = ("predict", "read", "manage")
MAX_NAME = 200  # characters in a strategy, key or model name
MAX_WINDOW = 1000  # data points per sample
MAX_FEATURES = 1000
MIN_PASSWORD = 8
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def name(value: Any, what: str) -> str:
    """A name of 1 to MAX_NAME characters, stripped; ``what`` says whose (``a key name``)."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
        raise InvalidData(f"{what} must have 1 to {MAX_NAME} characters")
    return value.strip()


def model_type(value: Any) -> str:
    if value not in MODEL_TYPES or not isinstance(value, str):
        raise InvalidData(f"the model type must be 'class' or 'reg', not {value!r}")
    return value


def window(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WINDOW:
        raise InvalidData(f"the window must be a whole number from 1 to {MAX_WINDOW}, "
                          f"not {value!r}")
    return value


MAX_FOLDS = 20  # walk-forward folds: each is one more fit
MAX_HORIZON = 10_000  # rows a label may look ahead


def whole(value: Any, what: str, low: int, high: int) -> int:
    """A whole number from ``low`` to ``high``, or one clear error naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidData(f"{what} must be a whole number from {low} to {high}, not {value!r}")
    return value


def evaluation(folds: Any, horizon: Any, bars_per_year: Any) -> None:
    whole(folds, "the number of folds", 1, MAX_FOLDS)
    whole(horizon, "the horizon", 0, MAX_HORIZON)
    if (isinstance(bars_per_year, bool) or not isinstance(bars_per_year, (int, float))
            or not 0 < bars_per_year <= 1e7):
        raise InvalidData("bars per year must be a number above 0 (252 for daily bars, "
                          f"8760 for hourly), not {bars_per_year!r}")


def email(value: str) -> str:
    value = value.strip()
    if not EMAIL.match(value):
        raise InvalidData(f"{value!r} is not an email address")
    return value


def password(value: str) -> str:
    if len(value) < MIN_PASSWORD:
        raise InvalidData(f"the password must have at least {MIN_PASSWORD} characters")
    return value


def scope(value: Any) -> str:
    if value not in SCOPES or not isinstance(value, str):
        raise InvalidData(f"the scope must be one of {', '.join(SCOPES)}, not {value!r}")
    return value


def scope_allows(held: str, needed: str) -> bool:
    """Does a key of scope ``held`` have the rights of ``needed``?"""
    return SCOPES.index(held) >= SCOPES.index(needed)


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def hyperparameters(family_name: str, params: dict[str, Any],
                    allowed: Mapping[str, Param]) -> dict[str, Any]:
    """``params`` checked against a family's ``parameters`` (name -> plugin_api.Param)."""
    for name, value in params.items():
        spec = allowed.get(name)
        if spec is None:
            known = ", ".join(sorted(allowed)) or "none"
            raise InvalidData(f"{family_name} has no hyperparameter {name!r} (it takes: {known})")
        _check_param(name, value, spec)
    return params


def _check_param(name: str, value: Any, spec: Param) -> None:
    if value is None:
        if not spec.nullable:
            raise InvalidData(f"the hyperparameter {name!r} can't be empty")
        return
    kind = type(value)
    fits = (kind in spec.kinds or (kind is int and float in spec.kinds)) and not (
        kind is bool and bool not in spec.kinds)
    if not fits:
        wanted = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in spec.kinds)
        raise InvalidData(f"the hyperparameter {name!r} must be {wanted}, got {value!r}")
    if kind is str:
        if spec.choices is not None and value not in spec.choices:
            raise InvalidData(f"the hyperparameter {name!r} must be one of "
                              f"{', '.join(spec.choices)}, got {value!r}")
        return
    if kind is float and not math.isfinite(value):
        raise InvalidData(f"the hyperparameter {name!r} must be a finite number, got {value!r}")
    if kind is not bool and (
        (spec.minimum is not None and value < spec.minimum)
        or (spec.maximum is not None and value > spec.maximum)
    ):
        low = "" if spec.minimum is None else f"from {spec.minimum:g} "
        high = "" if spec.maximum is None else f"to {spec.maximum:g}"
        raise InvalidData(f"the hyperparameter {name!r} must be {low}{high}".rstrip()
                          + f", got {value!r}")
