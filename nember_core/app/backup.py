"""``nember backup DIR`` and ``nember restore DIR``: the stores of every configured role, through
their providers' ``backup`` and ``restore`` (the core names no plugin).

Layout of a backup: one folder per role that was backed up, holding whatever its provider
copied, and ``manifest.json``, written last::

    DIR/manifest.json              format, nember version, when (started, finished),
                                   data_dir, roles and their plugins, every file with its
                                   size and SHA-256
    DIR/key_store/keys.sqlite3     (the embedded defaults)
    DIR/billing/billing.sqlite3
    DIR/jobs/jobs.sqlite3
    DIR/model_store/.generation, DIR/model_store/<account>/<strat>/<family>/<type>/{.highest,
                                   v000001/{model.bin,meta.json}, ...}

A folder per role, so two roles that share one store (one SQLite file named in both
sections) never write the same name. A folder without a manifest is an unfinished backup;
``restore`` checks every file against the manifest (none missing, none added, same size and
digest) before it changes anything, and refuses one that doesn't match.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from nember_core import __version__
from nember_core.config import ROLES
from nember_core.errors import NemberError
from nember_core.plugin_api import PluginContext

from .nember import Nember

MANIFEST = "manifest.json"
FORMAT = 1
NO_BACKUP = "this plugin has no backup: back its store up with its own tools"


def human_size(size: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _files(count: int) -> str:
    return f"{count} file{'s' if count != 1 else ''}"


def _digest(path: Path, sync: bool = False) -> tuple[int, str]:
    """Size and SHA-256 of a file (and, with ``sync``, make it durable on the way)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        if sync:
            os.fsync(handle.fileno())
    return size, digest.hexdigest()


def _seal_folder(folder: Path, root: Path) -> list[dict[str, Any]]:
    """Every file under ``folder`` (a role's), private to this user, durable, with its size
    and digest; paths relative to ``root`` (the backup's), '/'-separated."""
    entries = []
    for path, dirs, names in os.walk(folder):
        os.chmod(path, 0o700)
        dirs.sort()
        for name in sorted(names):
            file = Path(path, name)
            if file.is_symlink() or not file.is_file():
                raise NemberError(f"{file}: the backup may hold only regular files")
            file.chmod(0o600)
            size, sha256 = _digest(file, sync=True)
            entries.append({"path": file.relative_to(root).as_posix(), "size": size,
                            "sha256": sha256})
    return entries


def _write_manifest(target: Path, manifest: dict) -> None:
    """Written last, atomically: a backup folder without it is an unfinished one."""
    temporary = target / f".{MANIFEST}.tmp"
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        json.dump(manifest, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target / MANIFEST)
    directory = os.open(target, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


async def backup(nember: Nember, target: Path) -> int:
    """Copy every configured role's store into ``target`` (new, or an empty folder)."""
    target = target.absolute()
    if target.exists() and not target.is_dir():
        raise NemberError(f"{target}: exists and is not a folder; name a new folder")
    if target.is_dir() and any(target.iterdir()):
        raise NemberError(f"{target}: the folder is not empty; back up into a new folder")
    config = nember.config
    context = nember.plugin_context()
    created = not target.exists()
    try:
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        target.chmod(0o700)
    except OSError as exc:
        raise NemberError(f"{target}: can't be created: {exc.strerror or exc}") from None
    began = datetime.now(timezone.utc).isoformat()
    roles: dict[str, Any] = {}
    skipped: dict[str, Any] = {}
    files: list[dict[str, Any]] = []
    try:
        for role in ROLES:
            provider = nember.provider(role)
            if provider.backup is None:
                note = provider.backup_note or NO_BACKUP
                skipped[role] = {"plugin": provider.name, "note": note}
                print(f"{role} ({provider.name}): not backed up: {note}", flush=True)
                continue
            folder = target / role
            folder.mkdir(mode=0o700)
            started = time.monotonic()
            try:
                lines = await provider.backup(config.section(role).options, context, folder)
            except OSError as exc:
                where = f": {exc.filename}" if exc.filename else ""
                raise NemberError(f"{role} ({provider.name}): the backup failed: "
                                  f"{exc.strerror or exc}{where}") from None
            entries = await asyncio.to_thread(_seal_folder, folder, target)
            files.extend(entries)
            roles[role] = {"plugin": provider.name, "copied": lines}
            size = sum(entry["size"] for entry in entries)
            copied = (f": {_files(len(entries))}, {human_size(size)} in "
                      f"{time.monotonic() - started:.1f} s" if entries else "")
            print(f"{role} ({provider.name}): {'; '.join(lines)}{copied}", flush=True)
        if not files:
            raise NemberError(
                f"nothing to back up: no configured store keeps data on this machine yet "
                f"(data_dir {config.data_dir}); is this the right config?")
        manifest = {
            "format": FORMAT,
            "nember_version": __version__,
            "created_at": began,  # each store's copy is of a moment between these two
            "finished_at": datetime.now(timezone.utc).isoformat(),
            "data_dir": str(config.data_dir),
            "roles": roles,
            "not_backed_up": skipped,
            "files": files,
        }
        await asyncio.to_thread(_write_manifest, target, manifest)
    except BaseException:
        # Leave no partial backup behind (it would have no manifest anyway).
        if created:
            shutil.rmtree(target, ignore_errors=True)
        else:
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise
    total = sum(entry["size"] for entry in files)
    print(f"backup complete: {target}: {_files(len(files))}, {human_size(total)}; "
          f"restore it with: nember restore {target}")
    return 0


def read_manifest(source: Path) -> dict:
    """The manifest of the backup in ``source``, once every file is checked against it;
    :class:`NemberError` (one line) for a folder that is no complete, undamaged backup."""

    def refuse(problem: str) -> NemberError:
        return NemberError(f"{source}: not a complete backup, nothing was restored: {problem}")

    if not source.is_dir():
        raise NemberError(f"{source}: no such folder")
    try:
        manifest = json.loads((source / MANIFEST).read_text("utf-8"))
    except FileNotFoundError:
        raise refuse(f"no {MANIFEST} (an unfinished backup, or not one)") from None
    except (OSError, ValueError) as exc:
        raise refuse(f"{MANIFEST} can't be read: {exc}") from None
    try:
        if manifest["format"] != FORMAT:
            raise refuse(f"{MANIFEST} is of format {manifest['format']!r}; this nember reads "
                         f"{FORMAT}")
        roles = manifest["roles"]
        listed = {entry["path"]: entry for entry in manifest["files"]}
        if not isinstance(roles, dict) or not all(
                isinstance(entry["size"], int) and isinstance(entry["sha256"], str)
                for entry in listed.values()) or not all(
                isinstance(entry["plugin"], str) for entry in roles.values()):
            raise TypeError
    except (KeyError, TypeError, AttributeError):
        raise refuse(f"{MANIFEST} is damaged (a field is missing or of the wrong type)") \
            from None
    for name in listed:
        parts = PurePosixPath(name).parts
        if (PurePosixPath(name).is_absolute() or ".." in parts or len(parts) < 2
                or parts[0] not in roles):
            raise refuse(f"{MANIFEST} names a file outside the backup's role folders: {name!r}")
    found: set[str] = set()
    for role in roles:
        for path, _dirs, names in os.walk(source / role):
            found.update((Path(path, name).relative_to(source)).as_posix() for name in names)
    missing = sorted(set(listed) - found)
    added = sorted(found - set(listed))
    if missing:
        raise refuse(f"{len(missing)} missing: {', '.join(missing[:3])}"
                     + (", ..." if len(missing) > 3 else ""))
    if added:
        raise refuse(f"{len(added)} not in {MANIFEST}: {', '.join(added[:3])}"
                     + (", ..." if len(added) > 3 else ""))
    for name, entry in sorted(listed.items()):
        path = source / name
        if path.is_symlink() or not path.is_file():
            raise refuse(f"{name} is not a regular file")
        size, sha256 = _digest(path)
        if size != entry["size"]:
            raise refuse(f"{name} is damaged: {size} bytes, the manifest says {entry['size']}")
        if sha256 != entry["sha256"]:
            raise refuse(f"{name} is damaged: its SHA-256 differs from the manifest's")
    return manifest


async def restore(nember: Nember, source: Path, force: bool) -> int:
    """Put the backup in ``source`` in place of the configured stores."""
    source = source.absolute()
    manifest = await asyncio.to_thread(read_manifest, source)
    config = nember.config
    context = nember.plugin_context()
    plan = []
    for role, entry in manifest["roles"].items():
        if role not in ROLES:
            raise NemberError(f"{source}: the backup has a role this nember doesn't know: "
                              f"{role!r}; nothing was restored")
        provider = nember.provider(role)
        if provider.name != entry["plugin"]:
            raise NemberError(
                f"{source}: the backup's {role} is from the {entry['plugin']!r} plugin, "
                f"the config's is {provider.name!r}; nothing was restored")
        if provider.restore is None:
            raise NemberError(f"{role} ({provider.name}): this plugin can't restore a backup; "
                              "nothing was restored")
        plan.append((role, provider, config.section(role).options))
    for role in ROLES:
        provider = nember.provider(role)
        if provider.in_use is None:
            continue
        user = await provider.in_use(config.section(role).options, context)
        if user:
            raise NemberError(f"the stores are in use: {role} ({provider.name}): {user}; stop "
                              "the servers using them, then restore (nothing was restored)")
    existing: dict[str, list[str]] = {}
    for role, provider, options in plan:
        lines = await _restore_role(role, provider, options, context, source / role, True)
        if lines:
            existing[role] = lines
    if existing and not force:
        holds = "; ".join(f"{role}: {', '.join(lines)}" for role, lines in existing.items())
        raise NemberError(f"the configured stores hold data a restore would replace ({holds}); "
                          "add --force to replace them (nothing was restored)")
    nember.prepare_data_dir()
    for role, provider, options in plan:
        started = time.monotonic()
        lines = await _restore_role(role, provider, options, context, source / role, False)
        replaced = f"; it replaced {', '.join(existing[role])}" if role in existing else ""
        print(f"{role} ({provider.name}): restored {'; '.join(lines)} in "
              f"{time.monotonic() - started:.1f} s{replaced}", flush=True)
    for role in ROLES:
        provider = nember.provider(role)
        if role not in manifest["roles"] and provider.restore is not None:
            print(f"{role} ({provider.name}): not in the backup: left as it is")
    print(f"restore complete: the backup of {manifest.get('created_at', '?')} (nember "
          f"{manifest.get('nember_version', '?')}) is in {config.data_dir}")
    return 0


async def _restore_role(role: str, provider, options, context: PluginContext, folder: Path,
                        dry_run: bool) -> list[str]:
    try:
        return await provider.restore(options, context, folder, dry_run)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        raise NemberError(f"{role} ({provider.name}): the restore failed: "
                          f"{exc.strerror or exc}{where}") from None
