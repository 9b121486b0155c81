"""Checking a model file trained elsewhere before it is stored (``nember models import``).

Files whose loading runs code (pickles, joblib's, PyTorch's archives of them) are refused by
their bytes, before any library sees them. The rest is loaded by its family and asked one row
of zeros of the declared width, through the paths a server uses, in a process of its own: a
library that crashes or hangs on a crafted file takes only that process down.
"""

from __future__ import annotations

import asyncio
import bz2
import io
import lzma
import pickle
import re
import zipfile
import zlib
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from nember_core import rules
from nember_core.errors import InvalidData, ModelFileRejected
from nember_core.plugin_api import ModelFamily, Predictor
from nember_core.worker_pool import spawn_pool, stop_pool

from .dataset import parse_label

IMPORT_TIMEOUT = 300.0  # seconds the check of one model file may take
MAX_CLASSES = 1000  # as training allows


def class_labels(text: str) -> list[Any]:
    """Comma-separated class labels as a CLI or a form writes them; each read as a CSV's
    target cell is (``1`` an int, ``0.5`` a float, ``up`` a string), so that answers carry
    the labels as a model trained on that CSV would."""
    return [parse_label(part.strip()) for part in text.split(",") if part.strip()]


def feature_names(names: Any) -> list[str]:
    if not isinstance(names, (list, tuple)) or not names:
        raise InvalidData("name the model's features, in the order of its input")
    if len(names) > rules.MAX_FEATURES:
        raise InvalidData(f"at most {rules.MAX_FEATURES} features are supported")
    checked = [rules.name(name, "a feature name") for name in names]
    twice = next((name for i, name in enumerate(checked) if name in checked[:i]), None)
    if twice is not None:
        raise InvalidData(f"the feature {twice!r} is named twice")
    return checked


def checked_classes(labels: Any, model_type: str) -> tuple[Any, ...] | None:
    if labels is None:
        return None
    if model_type == "reg":
        raise InvalidData("classes name a class model's labels; a reg model has none")
    if not isinstance(labels, (list, tuple)) or not 2 <= len(labels) <= MAX_CLASSES:
        raise InvalidData(f"name 2 to {MAX_CLASSES} classes, the label of each class index "
                          "in order")
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, (int, float, str)) or (
                isinstance(label, str) and not label.strip()):
            raise InvalidData(f"a class label must be a number or a text, not {label!r}")
    if len(set(labels)) != len(labels):
        raise InvalidData("each class label must be named once")
    return tuple(labels)


CODE = ("pickle files can run code when loaded, so Nember refuses them; export the model to "
        "ONNX instead (or save it in its library's own format)")
PICKLE_MEMBERS = (".pkl", ".pickle", ".joblib", ".pt", ".pth")
# Protocol 0 and 1 pickles open with a GLOBAL: "c" module "\n" name "\n".
OLD_PICKLE = re.compile(rb"c[A-Za-z_][\w.]*\n[A-Za-z_][\w.]*\n")


def check_file(data: bytes, label: str) -> None:
    """Files whose loading runs code (pickles, joblib's, PyTorch's archives of them) are
    refused by their bytes, before any library sees them; so is an empty one."""
    if not isinstance(data, bytes) or not data:
        raise ModelFileRejected(f"{label} is empty")
    kind = _code_kind(data)
    if kind is not None:
        raise ModelFileRejected(f"{label} is {kind}: {CODE}")


def _code_kind(data: bytes) -> str | None:
    if _is_pickle(data):
        return "a Python pickle"
    if data[:4] == b"PK\x03\x04" and _zip_of_pickles(data):
        return "an archive of Python pickles (joblib, PyTorch)"
    if _is_pickle(_unpacked_head(data)):
        return "a compressed Python pickle (joblib)"
    return None


def _is_pickle(data: bytes) -> bool:
    return (data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")) or (
        OLD_PICKLE.match(data[:300]) is not None)


def _zip_of_pickles(data: bytes) -> bool:
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except (zipfile.BadZipFile, ValueError):
        return False
    return any(name.lower().endswith(PICKLE_MEMBERS) for name in names)


def _unpacked_head(data: bytes) -> bytes:
    """The first bytes of a zlib, gzip, bz2 or xz stream (joblib's compressions), else b""."""
    head = data[:4096]
    try:
        if head[:1] == b"\x78":
            return zlib.decompressobj().decompress(head, 16)
        if head[:2] == b"\x1f\x8b":
            return zlib.decompressobj(wbits=31).decompress(head, 16)
        if head[:3] == b"BZh":
            return bz2.BZ2Decompressor().decompress(head, 16)
        if head[:6] == b"\xfd7zXZ\x00":
            return lzma.LZMADecompressor().decompress(head, 16)
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError):
        pass
    return b""


async def inspect_apart(family: ModelFamily, model_type: str, artifact: bytes,
                         features: int, window: int, classes: tuple[Any, ...] | None,
                         label: str) -> tuple[Any, ...] | None:
    """``inspect_model`` in a process of its own: a crash or a hang there is one error."""
    try:
        pickle.dumps(family)
    except Exception:  # a family the child can't rebuild (defined inside a function): here
        return await asyncio.to_thread(inspect_model, family, model_type, artifact, features,
                                       window, classes, label)
    pool = spawn_pool(1)
    try:
        running = asyncio.get_running_loop().run_in_executor(
            pool, inspect_model, family, model_type, artifact, features, window, classes,
            label)
        return await asyncio.wait_for(running, IMPORT_TIMEOUT)
    except BrokenProcessPool:
        raise ModelFileRejected(f"{label}: the {family.name} library crashed loading it") \
            from None
    except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11 on
        raise ModelFileRejected(f"{label}: loading it took over {IMPORT_TIMEOUT:g} s") \
            from None
    finally:
        stop_pool(pool)


def inspect_model(family: ModelFamily, model_type: str, artifact: bytes, features: int,
                  window: int, classes: tuple[Any, ...] | None,
                  label: str) -> tuple[Any, ...] | None:
    """Load a model file with its family and ask it one row of zeros of the declared width,
    through the paths a server uses; return the class labels (named, else 0..k-1), or
    ``None`` for a reg model. Raises one clear error for anything a server couldn't serve."""
    try:
        model = family.loads(artifact, model_type)
    except Exception as exc:  # ModelFileRejected, or the library's own error on a bad file
        raise ModelFileRejected(f"{label} doesn't load as a model of the {family.name} "
                                f"family: {_line(exc)}") from None
    width = features * window
    zeros = np.zeros((1, width))
    try:
        batch = np.asarray(family.predict(model, model_type, zeros))
        built = family.predictor(model, model_type)
        if not isinstance(built, Predictor):  # a bare single-row function is enough
            built = Predictor(one=built)
        one = built.one(zeros)
        proba = built.proba(zeros) if model_type == "class" and built.proba else None
    except Exception as exc:
        plural = "s" if features > 1 else ""
        raise ModelFileRejected(f"{label}: the model can't answer a row of {features} "
                                f"feature{plural} x window {window} = {width} inputs: "
                                f"{_line(exc)}") from None
    if batch.size != 1:
        raise ModelFileRejected(f"{label}: the model gave {batch.size} outputs for one row, "
                                "not one")
    if model_type == "reg":
        _number(one, label)
        return None
    return _check_classes(one, proba, classes, label)


def _number(value: Any, label: str) -> float:
    try:
        if isinstance(value, (bool, str, bytes)):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise ModelFileRejected(f"{label}: a reg model must output a number per row, not "
                                f"{value!r}") from None


def _check_classes(one: Any, proba: Any, classes: tuple[Any, ...] | None,
                   label: str) -> tuple[Any, ...]:
    count = len(classes) if classes is not None else None
    if proba is not None:
        values = np.asarray(proba, dtype=np.float64).reshape(-1)
        if count is not None and values.size != count:
            raise ModelFileRejected(f"{label}: the model gives probabilities for {values.size} "
                                    f"classes, but {count} classes were named")
        if not (np.isfinite(values).all() and (values >= -1e-6).all()
                and abs(values.sum() - 1.0) < 1e-3):
            raise ModelFileRejected(f"{label}: the model's class probabilities are not "
                                    "probabilities (each from 0 to 1, summing to 1); a model "
                                    "ending with raw scores needs a softmax")
        count = values.size
    if count is None:
        raise InvalidData(f"{label}: the model gives no class probabilities to count its "
                          "classes by: name them (the label of each class index, in order)")
    index = _class_index(one)
    if index is None or not 0 <= index < count:
        raise ModelFileRejected(f"{label}: a class model must output a class index from 0 to "
                                f"{count - 1}; this one gave {one!r} for a row of zeros")
    return classes if classes is not None else tuple(range(count))


def _class_index(value: Any) -> int | None:
    if isinstance(value, (bool, np.bool_, str, bytes)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
