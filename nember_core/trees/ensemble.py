"""Single-row prediction for tree ensembles, as a few NumPy operations over all trees at once.

A library's own ``predict`` pays for input validation, threading and a DMatrix or DataFrame
on every call: 100-200 µs for one row, while walking 100 trees costs a few µs. This evaluator
lays every tree of an ensemble out in flat arrays (leaves point to themselves) and advances
all trees one level per step, so one row costs ``depth`` vectorised steps whatever the number
of trees. Family plugins build it from a fitted model and check it against the library.

The same trees can be compiled to native code (``nember_core.trees.native``); once the model
cache has compiled them, ``use_native`` makes every single-row call go through that instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np


@attrs.frozen
class Tree:
    """One tree: per node its children (-1 for a leaf), split feature, threshold, and value.

    ``value`` has one row per node and one column per output (class or target); only leaves'
    rows are used.
    """

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    value: np.ndarray


class TreeEnsemble:
    """Sum of the leaf values the row reaches in every tree, one sum per output."""

    __slots__ = ("trees", "less_equal", "dtype", "_roots", "_children", "_feature",
                 "_threshold", "_value", "_depth", "_single", "sums", "native", "points_reader")

    def __init__(self, trees: Sequence[Tree], less_equal: bool, dtype=np.float64,
                 single_row: Callable[[np.ndarray], np.ndarray] | None = None):
        """``less_equal``: a row goes left when ``x <= threshold`` (else when ``x <``);
        ``dtype``: the precision the library reads features in (XGBoost, scikit-learn:
        float32); ``single_row``: the library's own evaluator for one row when it beats the
        NumPy walk (a lone tree's C ``predict``), until native code replaces it.
        """
        self.trees = tuple(trees)
        self.less_equal = less_equal
        self.dtype = np.dtype(dtype)
        offsets = np.cumsum([0] + [len(t.left) for t in trees])
        lefts, rights = [], []
        for tree, offset in zip(trees, offsets[:-1], strict=True):
            own = np.arange(len(tree.left)) + offset
            leaf = tree.left < 0
            lefts.append(np.where(leaf, own, tree.left + offset))
            rights.append(np.where(leaf, own, tree.right + offset))
        self._roots = offsets[:-1].astype(np.intp)
        # Row 0: the right child, row 1: the left; indexed by the comparison's outcome.
        self._children = np.stack([np.concatenate(rights), np.concatenate(lefts)]).astype(np.intp)
        self._feature = np.concatenate([np.maximum(t.feature, 0) for t in trees]).astype(np.intp)
        # Thresholds stay float64: a float32 row promoted to float64 compares exactly as the
        # libraries compare (scikit-learn: float32 feature vs float64 threshold; XGBoost's
        # float32 thresholds are exact in float64).
        self._threshold = np.concatenate([t.threshold for t in trees]).astype(np.float64)
        self._value = np.concatenate([t.value for t in trees]).astype(np.float64)
        self._depth = max(_depth(t) for t in trees)
        self._single = single_row or self._walk
        # The per-output sums for one row given as a list of floats (an attribute, not a
        # method: the compiled trees' own once they are in use, with no call in between).
        self.sums: Callable[[list[float]], list[float]] = self._sums_of_array
        self.native = False
        # Once compiled: makes a reader of a request's points straight to ``sums``
        # (``NativeTrees.points_reader``), where the compiled reader could be built.
        self.points_reader: Callable[..., Any] | None = None

    def use_native(self, native: Callable[[np.ndarray], np.ndarray]) -> None:
        """Answer single rows with compiled code from now on (it computes the same sums);
        with its ``sums`` too when it has one (``NativeTrees``)."""
        self._single = native
        self.sums = getattr(native, "sums", self._sums_of_array)
        self.points_reader = getattr(native, "points_reader", None)
        self.native = True

    def _sums_of_array(self, values: list[float]) -> list[float]:
        return self._single(np.array(values, dtype=np.float64)).tolist()

    def digest(self, width: int) -> str:
        """Names these trees as compiled for rows of ``width`` features (a cache key)."""
        h = hashlib.sha256(f"{width}/{self.less_equal}/{self.dtype.str}".encode())
        for tree in self.trees:
            for array in (tree.left, tree.right, tree.feature, tree.threshold, tree.value):
                array = np.ascontiguousarray(array)
                h.update(f"{array.dtype.str}{array.shape}".encode())
                h.update(array.data)
        return h.hexdigest()

    def batch(self, rows: np.ndarray) -> np.ndarray:
        """The per-output sums for many rows (2-D: rows x features): rows x outputs."""
        x = rows.astype(self.dtype, copy=False)
        which = np.arange(len(x))[:, None]
        nodes = np.broadcast_to(self._roots, (len(x), len(self._roots)))
        children, feature, threshold = self._children, self._feature, self._threshold
        int8 = np.int8
        for _ in range(self._depth):
            if self.less_equal:
                go_left = x[which, feature[nodes]] <= threshold[nodes]
            else:
                go_left = x[which, feature[nodes]] < threshold[nodes]
            nodes = children[go_left.view(int8), nodes]
        return self._value[nodes].sum(axis=1)

    def __call__(self, row: np.ndarray) -> np.ndarray:
        """The per-output sums for one row (a 1-D array of the features)."""
        return self._single(row)

    def _walk(self, row: np.ndarray) -> np.ndarray:
        x = row.astype(self.dtype, copy=False)
        nodes = self._roots
        children, feature, threshold = self._children, self._feature, self._threshold
        int8 = np.int8
        if self.less_equal:
            for _ in range(self._depth):
                nodes = children[(x[feature[nodes]] <= threshold[nodes]).view(int8), nodes]
        else:
            for _ in range(self._depth):
                nodes = children[(x[feature[nodes]] < threshold[nodes]).view(int8), nodes]
        return self._value[nodes].sum(axis=0)


def _depth(tree: Tree) -> int:
    deepest, stack = 0, [(0, 0)]  # (node, its depth), from the root (node 0)
    while stack:
        node, depth = stack.pop()
        if depth > len(tree.left):  # only a cycle goes deeper than the node count
            raise ValueError("a tree's children form a cycle")
        deepest = max(deepest, depth)
        if tree.left[node] >= 0:
            stack.append((int(tree.left[node]), depth + 1))
            stack.append((int(tree.right[node]), depth + 1))
    return deepest
