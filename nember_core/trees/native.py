"""Tree ensembles compiled to a shared library with Treelite and TL2cgen, called via ctypes.

Every tree family hands the model cache the same description of its trees (a
``TreeEnsemble``: per node its children, feature, threshold and leaf values). Here that
description becomes a Treelite model, TL2cgen turns it into C (one nested ``if`` per node),
gcc compiles it, and the library's ``predict`` answers one row in a few µs, against 25-150 µs
for the NumPy walk and 100-5,000 µs for the libraries' own ``predict``.

The compiled code computes exactly the sums the NumPy walk computes: thresholds and leaf
values stay float64, and rows are rounded to float32 first for the libraries that read
features in float32 (scikit-learn, XGBoost), so every comparison is the library's own.

Compiling runs in a worker process (``build_library``); a 100-tree forest of fully grown
trees (~190,000 nodes) takes 15-20 s on two cores.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import tempfile
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .ensemble import Tree

NODES_PER_UNIT = 4000  # nodes per C file: gcc's time grows faster than linearly per file
OPTIMIZE = "-O1"  # -O2/-O3 compile far longer and answer no faster here


class CompileError(Exception):
    """gcc or TL2cgen failed; the message carries the tail of their output."""


def treelite_model(trees: Sequence[Tree], width: int, less_equal: bool):
    """The trees as a Treelite model whose raw output is the per-output sum of leaf values."""
    from treelite.model_builder import (
        Metadata,
        ModelBuilder,
        PostProcessorFunc,
        TreeAnnotation,
    )

    outputs = trees[0].value.shape[1]
    builder = ModelBuilder(
        threshold_type="float64",
        leaf_output_type="float64",
        metadata=Metadata(
            num_feature=width,
            task_type="kRegressor" if outputs == 1 else "kMultiClf",
            average_tree_output=False,
            num_target=1,
            num_class=[outputs],
            leaf_vector_shape=(1, outputs),
        ),
        tree_annotation=TreeAnnotation(
            num_tree=len(trees),
            target_id=[0] * len(trees),
            class_id=[0 if outputs == 1 else -1] * len(trees),
        ),
        postprocessor=PostProcessorFunc(name="identity"),
        base_scores=[0.0] * outputs,
    )
    opname = "<=" if less_equal else "<"
    for tree in trees:
        builder.start_tree()
        left, right = tree.left.tolist(), tree.right.tolist()
        feature, threshold = tree.feature.tolist(), tree.threshold.tolist()
        values = tree.value.tolist()
        for node, child in enumerate(left):
            builder.start_node(node)
            if child < 0:
                builder.leaf(values[node][0] if outputs == 1 else values[node])
            else:
                # Rows never have missing values (the protocol refuses them), so the
                # default direction is never taken.
                builder.numerical_test(feature[node], threshold[node], default_left=True,
                                       opname=opname, left_child_key=child,
                                       right_child_key=right[node])
            builder.end_node()
        builder.end_tree()
    return builder.commit()


def build_library(trees: Sequence[Tree], width: int, less_equal: bool, path: str) -> None:
    """Compile the trees to the shared library ``path`` (written atomically). Runs in a
    worker process."""
    target = Path(path)
    with open(target.with_suffix(".lock"), "w") as lock:
        # Another server process (--workers) may be compiling the same trees: wait for it.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            _build(trees, width, less_equal, target)


def _build(trees: Sequence[Tree], width: int, less_equal: bool, target: Path) -> None:
    import tl2cgen

    model = treelite_model(trees, width, less_equal)
    nodes = sum(len(tree.left) for tree in trees)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as scratch:
        library = Path(scratch) / target.name
        with _output_captured() as output:
            try:
                tl2cgen.export_lib(
                    model, toolchain="gcc", libpath=str(library),
                    params={"parallel_comp": max(1, nodes // NODES_PER_UNIT)},
                    nthread=os.cpu_count() or 1, options=[OPTIMIZE],
                )
            except Exception as exc:
                raise CompileError(f"{exc}; {_tail(output)}") from None
        os.replace(library, target)


@contextmanager
def _output_captured():
    """Keep Treelite's and gcc's chatter out of the server's log; keep it for errors."""
    with tempfile.TemporaryFile() as sink:
        saved = [os.dup(1), os.dup(2)]
        for fd in (1, 2):
            os.dup2(sink.fileno(), fd)
        try:
            yield sink
        finally:
            for fd, original in zip((1, 2), saved, strict=True):
                os.dup2(original, fd)
                os.close(original)


def _tail(sink, limit: int = 800) -> str:
    sink.seek(0)
    text = sink.read().decode(errors="replace").strip()
    return text[-limit:] if text else "no compiler output"


class NativeTrees:
    """One compiled ensemble: ``__call__(row)`` returns the per-output sums for one row, as
    ``TreeEnsemble`` does. Not thread-safe: one event loop calls it."""

    __slots__ = ("_library", "_predict", "_input", "_rounded", "_output", "_in", "_out",
                 "_doubles", "_singles", "_row", "_sums", "_zeros", "_bare", "_bare_args",
                 "_width", "_outputs", "_reader_type")

    def __init__(self, path: Path, width: int, outputs: int, dtype: np.dtype,
                 reader_type: Callable[..., Any] | None = None):
        """``reader_type``: the compiled reader's ``Reader`` (``trees.reader``), if built."""
        library = ctypes.CDLL(str(path))
        library.get_num_feature.restype = ctypes.c_int32
        library.get_num_target.restype = ctypes.c_int32
        classes = ctypes.c_int32(0)
        library.get_num_class(ctypes.byref(classes))
        shape = (library.get_num_feature(), library.get_num_target(), classes.value)
        if shape != (width, 1, outputs):
            raise CompileError(f"{path} has (features, targets, classes) {shape}, "
                               f"expected {(width, 1, outputs)}")
        self._library = library  # keeps it loaded
        self._predict = library.predict
        self._predict.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
        self._predict.restype = None
        # TL2cgen's input is an array of ``union Entry {int missing; double fvalue; ...}``,
        # 8 bytes each: a float64 array. A double whose low 32 bits are all ones would read
        # as missing; rows rounded to float32 never are, float64 ones with odds of 2^-32.
        self._input = np.zeros(width, dtype=np.float64)
        self._rounded = None if dtype == np.float64 else np.zeros(width, dtype=dtype)
        self._output = np.zeros(outputs, dtype=np.float64)
        self._in, self._out = self._input.ctypes.data, self._output.ctypes.data
        # ``sums``: the same buffers (kept alive by the arrays above), filled and read through
        # struct and ctypes.
        self._doubles = struct.Struct(f"{width}d")
        self._singles = None if self._rounded is None else struct.Struct(f"{width}f")
        self._row = (ctypes.c_double * width).from_address(self._in)
        self._sums = (ctypes.c_double * outputs).from_address(self._out)
        self._zeros: list[ctypes.c_double | float] = [0.0] * outputs
        # The same function without argtypes, called with arguments made once: ctypes then
        # converts nothing per call.
        self._bare = library["predict"]
        self._bare.restype = None
        self._bare_args = (ctypes.c_void_p(self._in), ctypes.c_int(1),
                           ctypes.c_void_p(self._out))
        self._width, self._outputs, self._reader_type = width, outputs, reader_type

    def __call__(self, row: np.ndarray) -> np.ndarray:
        if self._rounded is None:
            self._input[:] = row
        else:  # as the library reads it: rounded to float32, then exact as a double
            self._rounded[:] = row
            self._input[:] = self._rounded
        output = self._output
        output.fill(0.0)
        self._predict(self._in, 1, self._out)  # 1: the raw sums (no post-processing)
        return output.copy()

    def sums(self, values: Sequence[float]) -> list[float]:
        """``__call__`` for a row given as floats, answered as floats: no NumPy call."""
        singles = self._singles
        if singles is not None:  # rounded to float32 as NumPy rounds: C's cast, inf beyond
            values = singles.unpack(singles.pack(*values))
        self._doubles.pack_into(self._row, 0, *values)
        sums = self._sums
        sums[:] = self._zeros
        self._bare(*self._bare_args)
        return sums[:]

    def points_reader(self, features: tuple[str, ...],
                      window: int) -> Callable[[Any], list[float] | None] | None:
        """``sums`` of a request's points (``window`` dicts of ``features``) in one C call, or
        ``None`` without the compiled reader. It answers ``None`` for points that aren't
        plainly right: their checks, in Python, word the error."""
        if self._reader_type is None or len(features) * window != self._width:
            return None
        address = ctypes.cast(self._bare, ctypes.c_void_p).value
        return self._reader_type(address, tuple(features), window, self._outputs,
                                 self._rounded is not None, self._library).sums
