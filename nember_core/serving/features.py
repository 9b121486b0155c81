"""Turning a request's ``DataPoints`` into the row a model was trained on.

Built once per loaded model version: the fast path is a fixed walk over the feature names;
the detailed error messages are only worked out when something is wrong.
"""

from __future__ import annotations

import math
from operator import itemgetter
from typing import Any, NoReturn

import numpy as np

from .protocol import RequestError, describe, quoted


class FeatureExtractor:
    __slots__ = ("features", "window", "width", "_values")

    def __init__(self, features: tuple[str, ...], window: int):
        self.features = features
        self.window = window
        self.width = len(features)
        # One point's values in the trained order, in one C call (a tuple; with one feature
        # itemgetter gives the value itself, so it is wrapped in one).
        if len(features) == 1:
            name = features[0]
            self._values = lambda point: (point[name],)
        else:
            self._values = itemgetter(*features)

    def row(self, points: list[Any]) -> np.ndarray:
        """A 1 x (window * features) float64 array, oldest point first."""
        try:
            # No finiteness check per frame: orjson refuses NaN, Infinity and out-of-range
            # numbers, so every float that reaches here is finite.
            return np.array((self.values(points),), dtype=np.float64)
        except OverflowError:  # an integer beyond a double's range
            self._explain(points)

    def values(self, points: list[Any]) -> list[float | int]:
        """The row's values, checked, as a list: oldest point first, in the trained order."""
        if len(points) != self.window:
            raise RequestError(
                f"Field 'DataPoints' has {len(points)} data point"
                f"{'' if len(points) == 1 else 's'}; this model was trained with "
                f"{self.window} (its window)."
            )
        values: list[Any] = []
        extend, width, point_values = values.extend, self.width, self._values
        try:
            for point in points:
                if type(point) is not dict or len(point) != width:
                    self._explain(points)
                extend(point_values(point))
        except KeyError:
            self._explain(points)
        for value in values:
            kind = type(value)
            if kind is not float and kind is not int:
                self._explain(points)
        return values

    def _explain(self, points: list[Any]) -> NoReturn:
        """Raise the precise error for points that failed the fast checks."""
        expected = set(self.features)
        for i, point in enumerate(points):
            if type(point) is not dict:
                raise RequestError(
                    f"DataPoints[{i}] must be an object of feature values, got {describe(point)}."
                )
            missing = [name for name in self.features if name not in point]
            if missing:
                raise RequestError(
                    f"DataPoints[{i}] is missing the feature{'s' if len(missing) > 1 else ''} "
                    f"{_names(missing)}; the model expects {_names(self.features)}."
                )
            extra = [name for name in point if name not in expected]
            if extra:
                raise RequestError(
                    f"DataPoints[{i}] has unexpected feature{'s' if len(extra) > 1 else ''} "
                    f"{_names(extra)}; the model expects {_names(self.features)}."
                )
            for name in self.features:
                value = point[name]
                if type(value) is bool or not isinstance(value, (int, float)):
                    raise RequestError(
                        f"DataPoints[{i}][{quoted(name)}] must be a number, got {describe(value)}."
                    )
                try:
                    finite = math.isfinite(float(value))
                except OverflowError:
                    finite = False
                if not finite:
                    raise RequestError(
                        f"DataPoints[{i}][{quoted(name)}] must be a finite number within the range "
                        "of a double."
                    )
        raise RequestError("DataPoints could not be read.")  # unreachable in practice


def _names(names) -> str:
    return ", ".join(quoted(name) for name in names)
