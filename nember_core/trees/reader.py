"""Builds and loads the compiled reader (``reader.c``): a request's ``DataPoints`` read into
compiled trees, their sums back, in one C call.

Python reads a frame's points and calls the compiled trees in ~2.5 µs (the checks, struct
packing, ctypes); the reader does it in a fraction of that. It is built once per machine and
Python (gcc against this Python's headers, under a second), kept beside the compiled trees
and loaded as an extension module. Where it can't be built (a Python without its headers:
Debian's ``python3-dev`` package) compiled trees are called through ctypes as before.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).with_name("reader.c")
MODULE = "_nember_reader"  # PyInit__nember_reader in reader.c
VERSION = 1  # bump when reader.c changes: a new file name, never a stale build


class ReaderBuildError(Exception):
    """gcc failed; the message carries the tail of its output."""


def unavailable_reason() -> str | None:
    """Why the reader can't be built here, or ``None`` when it can."""
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        return f"Python's headers are not installed (no {headers})"
    if shutil.which("gcc") is None:
        return "gcc is not on the PATH"
    return None


def file_name() -> str:
    """This Python's build of this version (the ABI is in the suffix)."""
    return f"reader-{VERSION}{sysconfig.get_config_var('EXT_SUFFIX')}"


async def build(path: Path) -> None:
    """Compile ``reader.c`` to ``path``, atomically: two processes may build it at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as scratch:
        built = Path(scratch) / path.name
        process = await asyncio.create_subprocess_exec(
            "nice", "-n", "19", "gcc", "-shared", "-fPIC", "-O2",
            f"-I{sysconfig.get_paths()['include']}", str(SOURCE), "-o", str(built),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise ReaderBuildError(output.decode(errors="replace").strip()[-800:])
        os.replace(built, path)


def load(path: Path) -> Any:
    """The ``Reader`` type of the build at ``path``."""
    spec = importlib.util.spec_from_file_location(MODULE, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not an extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Reader
