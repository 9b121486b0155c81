"""Backups of the SQLite stores (``nember backup``, ``nember restore``), through SQLite's online
backup API, both ways.

Backing up copies every page in one step while holding one read transaction: in WAL mode that
is a consistent snapshot of the file, and servers keep writing (their commits go to the WAL)
while it runs. The copy is left in rollback-journal mode: one self-contained file, which
restore reads without writing beside it. Restoring copies the pages back into the store's
file through a connection of its own (SQLite's locks and WAL included, in one transaction),
so a WAL a crashed server left behind is never replayed over the restored pages.

The connection registry holds only live state: nothing to back up, but its heartbeats say
whether a server uses the ``data_dir`` now.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from nember_core.plugin_api import NemberError

from .db import BUSY_TIMEOUT_SECONDS

SUFFIXES = ("", "-wal", "-shm", "-journal")


def human_size(size: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _rows(db: sqlite3.Connection) -> int:
    tables = [name for (name,) in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    return sum(db.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0] for name in tables)


def _private_file(path: Path) -> None:
    """Create ``path`` empty, readable by this user only (SQLite gives its -wal and -shm
    files the database file's permissions)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def backup_file(path: Path, folder: Path) -> list[str]:
    """Copy the database ``path`` into ``folder`` under its own name."""
    if not path.exists():
        return [f"{path}: no such file yet (the store was never opened): nothing to copy"]
    target = folder / path.name
    _private_file(target)
    try:
        with closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS)) as source, \
                closing(sqlite3.connect(target)) as copy:
            source.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_SECONDS * 1000}")
            source.backup(copy)  # every page in one step: one snapshot
            copy.execute("PRAGMA journal_mode=DELETE")
            (check,) = copy.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise NemberError(f"{path}: the copy fails SQLite's check: {check}")
            rows = _rows(copy)
    except sqlite3.Error as exc:
        raise NemberError(f"{path}: can't be copied: {exc}") from None
    return [f"{path.name} ({human_size(target.stat().st_size)}, {rows} rows)"]


def _the_copy(folder: Path) -> Path | None:
    try:
        files = [name for name in os.listdir(folder) if not name.startswith(".")]
    except FileNotFoundError:  # nothing was copied (an empty folder a copy tool left out)
        return None
    if len(files) > 1:
        raise NemberError(f"{folder}: expected one SQLite file, found {len(files)}")
    return folder / files[0] if files else None


def _describe(path: Path) -> str | None:
    """What the database ``path`` holds, or ``None`` when it holds nothing (no file, or a
    file whose tables are all empty: a store opened once and never used)."""
    if not path.exists():
        return None
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True,
                                     timeout=BUSY_TIMEOUT_SECONDS)) as db:
            rows = _rows(db)
    except sqlite3.Error as exc:
        return f"{path} (unreadable: {exc})"
    if rows == 0:
        return None
    return f"{path} ({human_size(path.stat().st_size)}, {rows} rows)"


def restore_file(path: Path, folder: Path, dry_run: bool) -> list[str]:
    """Put the copy in ``folder`` in place of the database ``path``."""
    copy = _the_copy(folder)
    if copy is None:  # the store had no file when it was backed up: nothing to put back
        return [] if dry_run else [f"nothing (no file was backed up); {path} left as it is"]
    existing = _describe(path)
    if dry_run:
        return [existing] if existing else []
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        _private_file(path)
    for suffix in SUFFIXES:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)
    try:
        with closing(sqlite3.connect(f"{copy.as_uri()}?mode=ro", uri=True)) as source, \
                closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS)) as db:
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_SECONDS * 1000}")
            source.backup(db)
            db.execute("PRAGMA journal_mode=WAL")  # what the stores open it in
            rows = _rows(db)
    except sqlite3.Error as exc:
        raise NemberError(f"{path}: can't be restored from {copy}: {exc}") from None
    return [f"{copy.name} into {path} ({human_size(path.stat().st_size)}, {rows} rows)"]


def registry_in_use(path: Path, stale_after: float) -> str | None:
    """Which server processes have written a heartbeat into the registry ``path`` lately."""
    if not path.exists():
        return None
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True,
                                     timeout=BUSY_TIMEOUT_SECONDS)) as db:
            rows = db.execute("SELECT instance FROM instances WHERE seen_at >= ?",
                              (time.time() - stale_after,)).fetchall()
    except sqlite3.Error:
        return None  # no registry's tables: nobody registered
    if not rows:
        return None
    nodes = sorted({instance.rpartition(":")[0] for (instance,) in rows})
    return (f"{len(rows)} live Nember process{'es' if len(rows) > 1 else ''} on node "
            f"{', '.join(nodes)} (a heartbeat in {path.name} within {stale_after:g} s)")
