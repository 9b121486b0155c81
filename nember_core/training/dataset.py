"""Reading a user's time-ordered CSV and cutting it into windowed samples.

Sample t is the features of rows t-W+1..t (oldest first, flattened) labelled with the target of
row t, exactly the layout a prediction request's ``DataPoints`` has.
"""

from __future__ import annotations

import contextlib
import csv
import math
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from nember_core.errors import InvalidData
from nember_core.rules import MAX_FEATURES


@attrs.frozen
class Dataset:
    features: tuple[str, ...]
    target: str
    X: np.ndarray  # rows x features, float64, in time order
    y: list[Any]  # the target of each row, as written (numbers parsed, strings kept)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@contextlib.contextmanager
def shown_as(path: Path, label: str | None):
    """CSV errors name the file ``label`` instead of ``path`` (an upload's path on the server
    means nothing to its sender)."""
    try:
        yield
    except InvalidData as exc:
        if label is None:
            raise
        raise InvalidData(str(exc).replace(str(path), label)) from None


def _rows(path: Path, limit: int | None = None) -> list[list[str]]:
    """The CSV's non-blank rows (the first ``limit`` of them only, when given)."""
    rows: list[list[str]] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            for row in csv.reader(handle):
                if any(cell.strip() for cell in row):
                    rows.append(row)
                    if limit is not None and len(rows) >= limit:
                        break
    except FileNotFoundError:
        raise InvalidData(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidData(f"{path}: cannot read the CSV file: {exc}") from None
    if len(rows) < 2:
        raise InvalidData(f"{path}: needs a header row and at least one data row")
    return rows


def _header(path: Path, rows: list[list[str]]) -> list[str]:
    header = [name.strip() for name in rows[0]]
    if len(set(header)) != len(header):
        raise InvalidData(f"{path}: the header names a column twice")
    return header


def _check_names(path: Path, header: list[str], target: str, features: list[str] | None):
    """What the header alone tells of the target and the features."""
    if target not in header:
        raise InvalidData(f"{path}: no column named {target!r} (columns: {', '.join(header)})")
    for name in features or ():
        if name not in header:
            raise InvalidData(f"{path}: no column named {name!r} (columns: {', '.join(header)})")
        if name == target:
            raise InvalidData(f"{path}: the target {target!r} cannot also be a feature")
    if features is not None and len(set(features)) != len(features):
        raise InvalidData(f"{path}: a feature is named twice")
    if features is not None and len(features) > MAX_FEATURES:
        raise InvalidData(f"{path}: at most {MAX_FEATURES} features are supported")


def check_header(path: Path, target: str, features: list[str] | None) -> list[str]:
    """The header, checked against the target and features, from the first two rows only:
    a server checks an upload this way and leaves the reading to a training worker."""
    rows = _rows(path, limit=2)
    header = _header(path, rows)
    _check_names(path, header, target, features)
    return header


def read_csv(path: Path, target: str, features: list[str] | None) -> Dataset:
    rows = _rows(path)
    header = _header(path, rows)
    body = rows[1:]
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise InvalidData(
                f"{path}: line {line} has {len(row)} values, the header has {len(header)}"
            )
    _check_names(path, header, target, features)

    columns = {name: [row[i].strip() for row in body] for i, name in enumerate(header)}
    numeric = {
        name for name, cells in columns.items() if all(_number(c) is not None for c in cells)
    }
    if features is None:
        features = [name for name in header if name != target and name in numeric]
        if not features:
            raise InvalidData(f"{path}: no numeric feature column besides the target {target!r}")
        if len(features) > MAX_FEATURES:
            raise InvalidData(f"{path}: at most {MAX_FEATURES} features are supported")
    for name in features:
        if name not in numeric:
            line = next(i for i, c in enumerate(columns[name], start=2) if _number(c) is None)
            raise InvalidData(
                f"{path}: feature {name!r} is not numeric (line {line}: "
                f"{columns[name][line - 2]!r})"
            )

    X = np.array([[float(c) for c in columns[name]] for name in features], dtype=np.float64).T
    y = [_label(c) for c in columns[target]]
    return Dataset(features=tuple(features), target=target, X=X, y=y)


def _label(text: str) -> Any:
    """A target cell as the user wrote it: an int, a float, or the string itself."""
    try:
        return int(text)
    except ValueError:
        pass
    value = _number(text)
    return text if value is None else value


def windowed(X: np.ndarray, window: int) -> np.ndarray:
    """Samples of ``window`` consecutive rows, flattened oldest first: shape (n-W+1, W*F)."""
    n, f = X.shape
    if window < 1:
        raise InvalidData("the window must be at least 1")
    if n < window:
        raise InvalidData(f"the data has {n} rows, fewer than the window of {window}")
    view = np.lib.stride_tricks.sliding_window_view(X, (window, f))[:, 0]
    return np.ascontiguousarray(view.reshape(n - window + 1, window * f))
