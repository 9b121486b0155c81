"""Backups of the local-disk model store (``nember backup``, ``nember restore``).

A version is complete once its folder is renamed into place, and never changes after, so a
backup copies every version folder it finds (never ``.tmp``, where versions are written and
deleted ones go). A version deleted while it is being copied is left out. Each model's
``.highest`` goes along, raised to the highest version copied (a save renames its version
into place before it writes ``.highest``), so a restored store never hands out a version
number again, not even a deleted version's. Restoring builds the whole store in a folder
beside the configured one, then renames it into place.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from pathlib import Path

from nember_core.plugin_api import NemberError

from . import GENERATION_FILE, HIGHEST_FILE, META_FILE, _fsync_write

VERSION = re.compile(r"v\d+")
DEPTH = 4  # ROOT/<account>/<strat>/<family>/<type>: a model's folder


def _model_dirs(root: Path) -> list[Path]:
    """Every model's folder (segments never start with '.': ``.tmp`` is not one)."""
    found = [root]
    for _ in range(DEPTH):
        found = [child for parent in found for child in _subdirs(parent)]
    return sorted(found)


def _subdirs(folder: Path) -> list[Path]:
    try:
        return [Path(entry.path) for entry in os.scandir(folder)
                if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".")]
    except FileNotFoundError:  # deleted meanwhile
        return []


def _versions(model_dir: Path) -> list[str]:
    return sorted(d.name for d in _subdirs(model_dir) if VERSION.fullmatch(d.name))


def _highest(model_dir: Path) -> int:
    try:
        return int((model_dir / HIGHEST_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return 0


def _write_private(path: Path, data: bytes) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _copy_private(source: Path, target: Path) -> None:
    with open(source, "rb") as reading, \
            open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as writing:
        shutil.copyfileobj(reading, writing, 1 << 20)
        writing.flush()
        os.fsync(writing.fileno())


def _copy_version(source: Path, target: Path) -> bool:
    """Copy one version folder; ``False`` when it was deleted before it could be copied."""
    target.mkdir(mode=0o700)
    try:
        names = os.listdir(source)
        if META_FILE not in names:
            raise FileNotFoundError(source / META_FILE)
        for name in names:
            _copy_private(source / name, target / name)
    except FileNotFoundError:
        shutil.rmtree(target)
        return False
    return True


def _count(versions: int, models: int) -> str:
    return (f"{versions} version{'s' if versions != 1 else ''} of {models} "
            f"model{'s' if models != 1 else ''}")


def backup_models(root: Path, folder: Path) -> list[str]:
    if not root.is_dir():
        return [f"{root}: no such folder yet (no model was ever stored): nothing to copy"]
    versions = models = skipped = 0
    with contextlib.suppress(FileNotFoundError):
        _copy_private(root / GENERATION_FILE, folder / GENERATION_FILE)
    for model_dir in _model_dirs(root):
        target = folder / model_dir.relative_to(root)
        copied = []
        for name in _versions(model_dir):
            target.mkdir(mode=0o700, parents=True, exist_ok=True)
            if _copy_version(model_dir / name, target / name):
                copied.append(int(name[1:]))
            else:
                skipped += 1
        # Read after the versions: whatever was copied is at most this, or the save that
        # stored it has not written it yet.
        highest = max([_highest(model_dir), *copied])
        if highest:
            target.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_private(target / HIGHEST_FILE, str(highest).encode())
        versions += len(copied)
        models += bool(copied)
    line = f"{_count(versions, models)} from {root}"
    if skipped:
        line += f" ({skipped} deleted while being copied: left out)"
    return [line]


def _describe(root: Path) -> str | None:
    """What the store at ``root`` holds, or ``None`` for nothing (no version, ever)."""
    if not root.is_dir():
        return None
    versions = models = 0
    highest = False
    for model_dir in _model_dirs(root):
        found = len(_versions(model_dir))
        versions += found
        models += bool(found)
        highest = highest or _highest(model_dir) > 0
    if not versions and not highest:
        return None
    return f"{root} ({_count(versions, models)})"


def _private_tree(folder: Path) -> None:
    for path, _dirs, files in os.walk(folder):
        os.chmod(path, 0o700)
        for name in files:
            os.chmod(os.path.join(path, name), 0o600)


def restore_models(root: Path, folder: Path, dry_run: bool) -> list[str]:
    existing = _describe(root)
    if dry_run:
        return [existing] if existing else []
    root.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = root.with_name(f".{root.name}.restoring-{uuid.uuid4().hex}")
    replaced = root.with_name(f".{root.name}.replaced-{uuid.uuid4().hex}")
    try:
        if folder.is_dir():
            shutil.copytree(folder, staging, copy_function=shutil.copyfile)
        else:  # nothing was copied (an empty folder a copy tool left out)
            staging.mkdir()
        (staging / ".tmp").mkdir(exist_ok=True)
        _private_tree(staging)
        # A new token: anything that cached the store before sees that it changed.
        token = uuid.uuid4().hex
        _fsync_write(staging / ".tmp" / token, token.encode())
        os.replace(staging / ".tmp" / token, staging / GENERATION_FILE)
        os.chmod(staging / GENERATION_FILE, 0o600)
        if root.exists():
            os.rename(root, replaced)
        os.rename(staging, root)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise NemberError(f"{root}: the models can't be restored: {exc.strerror or exc}") \
            from None
    shutil.rmtree(replaced, ignore_errors=True)
    versions = models = 0
    for model_dir in _model_dirs(root):
        found = len(_versions(model_dir))
        versions += found
        models += bool(found)
    return [f"{_count(versions, models)} into {root}"]
