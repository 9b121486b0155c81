"""Reading a user's time-ordered CSV and cutting it into windowed samples.

Sample t is the features of rows t-W+1..t (oldest first, flattened) labelled with the target of
row t, exactly the layout a prediction request's ``DataPoints`` has.

A trader's export usually starts with warm-up rows, whose rolling indicators are still empty
(a 20-bar average has none for 19 rows). They are an error naming the way out, unless the
request asks to skip them: then the leading rows with an empty cell in a feature or the target
are dropped, and only those.
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

# Columns that number or date the rows: never default features (a model would learn the date).
TIME_COLUMNS = frozenset({"timestamp", "time", "date", "datetime", "index", "tick", "unnamed: 0"})
# Cells that say "no value yet": what pandas, spreadsheets and trading tools write for one.
EMPTY_CELLS = frozenset({"", "nan", "na", "n/a", "null", "none", "#n/a"})
SKIP_WARMUP = ("skip the warm-up rows (the CLI's --skip-warmup, the REST API's "
               "skip_warmup=true)")


@attrs.frozen
class Dataset:
    features: tuple[str, ...]
    target: str
    X: np.ndarray  # rows x features, float64, in time order
    y: list[Any]  # the target of each row, as written (numbers parsed, strings kept)
    skipped: int = 0  # leading warm-up rows dropped
    defaulted: bool = False  # the features were not named: every numeric column was taken
    returns: np.ndarray | None = None  # each row's next-bar return, for the backtest


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
    if len(header) == 1:
        for mark, name in ((";", "semicolons"), ("\t", "tabs")):
            if mark in header[0]:
                raise InvalidData(
                    f"{path}: the header is one column, {header[0][:60]!r}: the file looks "
                    f"separated by {name}. Save it as comma-separated values (commas "
                    "between values, a point as the decimal mark)")
    if len(set(header)) != len(header):
        raise InvalidData(f"{path}: the header names a column twice")
    return header


def _check_names(path: Path, header: list[str], target: str, features: list[str] | None,
                 returns: str | None = None):
    """What the header alone tells of the target, the features and the returns column."""
    if target not in header:
        raise InvalidData(f"{path}: no column named {target!r} (columns: {', '.join(header)})")
    if returns is not None:
        if returns not in header:
            raise InvalidData(
                f"{path}: no column named {returns!r} (columns: {', '.join(header)})")
        if returns == target:
            raise InvalidData(f"{path}: the returns column {returns!r} cannot be the target")
        if returns in (features or ()):
            raise InvalidData(f"{path}: the returns column {returns!r} cannot be a feature: "
                              "it holds the next bar's return, unknown when a bot asks")
    for name in features or ():
        if name not in header:
            raise InvalidData(f"{path}: no column named {name!r} (columns: {', '.join(header)})")
        if name == target:
            raise InvalidData(f"{path}: the target {target!r} cannot also be a feature")
    if features is not None and len(set(features)) != len(features):
        raise InvalidData(f"{path}: a feature is named twice")
    if features is not None and len(features) > MAX_FEATURES:
        raise InvalidData(f"{path}: at most {MAX_FEATURES} features are supported")


def check_header(path: Path, target: str, features: list[str] | None,
                 returns: str | None = None) -> list[str]:
    """The header, checked against the target, features and returns column, from the first
    two rows only: a server checks an upload this way and leaves the reading to a training
    worker."""
    rows = _rows(path, limit=2)
    header = _header(path, rows)
    _check_names(path, header, target, features, returns)
    return header


def _empty(cell: str) -> bool:
    return cell.lower() in EMPTY_CELLS


def _leading_empty(cells: list[str]) -> int:
    """How many of the first cells are empty."""
    count = 0
    for cell in cells:
        if not _empty(cell):
            break
        count += 1
    return count


def _numeric_after_warmup(cells: list[str]) -> bool:
    """Numbers from the first non-empty cell on (and at least one): an indicator column."""
    start = _leading_empty(cells)
    return start < len(cells) and all(_number(c) is not None for c in cells[start:])


def read_csv(path: Path, target: str, features: list[str] | None,
             skip_warmup: bool = False, returns: str | None = None) -> Dataset:
    rows = _rows(path)
    header = _header(path, rows)
    body = rows[1:]
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise InvalidData(
                f"{path}: line {line} has {len(row)} values, the header has {len(header)}"
            )
    _check_names(path, header, target, features, returns)
    defaulted = features is None
    labels = [target] if returns is None else [target, returns]
    # Never default features: the labels, and the columns that number or date the rows.
    aside = {*labels, *(name for name in header if name.lower() in TIME_COLUMNS)}

    columns = {name: [row[i].strip() for row in body] for i, name in enumerate(header)}
    skipped = 0
    if skip_warmup:
        watched = features if features is not None else [
            name for name in header
            if name not in aside and _numeric_after_warmup(columns[name])]
        skipped = max(_leading_empty(columns[name]) for name in [*watched, *labels])
        if skipped == len(body):
            raise InvalidData(f"{path}: every row has an empty cell in a feature or the target")
        columns = {name: cells[skipped:] for name, cells in columns.items()}
    numeric = {
        name for name, cells in columns.items() if all(_number(c) is not None for c in cells)
    }
    if features is None:
        # A column that is numbers but for its first rows is an indicator warming up: never
        # left out of the default features without a word.
        warming = [name for name in header if name not in aside and name not in numeric
                   and _numeric_after_warmup(columns[name])]
        if warming:
            first = warming[0]
            raise InvalidData(
                f"{path}: column {first!r} is empty on its first "
                f"{_leading_empty(columns[first])} rows (warm-up rows of an indicator?): "
                f"{SKIP_WARMUP}, or name the features to use")
        features = [name for name in header if name not in aside and name in numeric]
        if not features:
            raise InvalidData(f"{path}: no numeric feature column besides the target {target!r}")
        if len(features) > MAX_FEATURES:
            raise InvalidData(f"{path}: at most {MAX_FEATURES} features are supported")
    for name in features:
        if name not in numeric:
            cells = columns[name]
            if not skip_warmup and _numeric_after_warmup(cells):
                raise InvalidData(
                    f"{path}: feature {name!r} is empty on its first {_leading_empty(cells)} "
                    f"rows (warm-up rows of an indicator?): {SKIP_WARMUP}")
            index = next(i for i, c in enumerate(cells) if _number(c) is None)
            raise InvalidData(
                f"{path}: feature {name!r} is not numeric (line {index + 2 + skipped}: "
                f"{cells[index]!r})"
            )

    X = np.array([[float(c) for c in columns[name]] for name in features], dtype=np.float64).T
    y = [parse_label(c) for c in columns[target]]
    next_returns = None
    if returns is not None:
        if returns not in numeric:
            cells = columns[returns]
            index = next(i for i, c in enumerate(cells) if _number(c) is None)
            raise InvalidData(f"{path}: the returns column {returns!r} is not numeric (line "
                              f"{index + 2 + skipped}: {cells[index]!r})")
        next_returns = np.array([float(c) for c in columns[returns]], dtype=np.float64)
    return Dataset(features=tuple(features), target=target, X=X, y=y, skipped=skipped,
                   defaulted=defaulted, returns=next_returns)


def parse_label(text: str) -> Any:
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
