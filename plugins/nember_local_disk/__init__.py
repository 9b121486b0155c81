"""The embedded default model store: versioned folders on the local disk.

Layout: ``ROOT/<account>/<strat>/<family>/<type>/v000001/{model.bin,meta.json}``. A version is
written into a temporary folder, fsynced, and renamed into place, so readers never see half a
model; two writers racing for the same version number simply retry with the next one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import quote

import attrs

from nember_core.plugin_api import ModelKey, ModelMeta, PluginContext, Provider, hookimpl

MODEL_FILE = "model.bin"
META_FILE = "meta.json"
GENERATION_FILE = ".generation"
HIGHEST_FILE = ".highest"  # per model: the highest version ever stored, deleted ones included


MAX_SEGMENT = 200  # bytes; file systems refuse names over 255


def _segment(name: str) -> str:
    """A user-chosen name as one safe path segment (no '/', no '..'); a name too long for the
    file system becomes its digest (meta.json keeps the name itself)."""
    segment = quote(name, safe="").replace(".", "%2E")
    if len(segment) > MAX_SEGMENT:
        return "~" + hashlib.sha256(name.encode()).hexdigest()
    return segment


def _version_dir(version: int) -> str:
    return f"v{version:06d}"


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


class LocalDiskModelStore:
    def __init__(self, root: Path):
        self.root = root
        (root / ".tmp").mkdir(parents=True, exist_ok=True)

    def _key_dir(self, key: ModelKey) -> Path:
        parts = (key.account_id, key.strat, key.family, key.model_type)
        return self.root.joinpath(*(_segment(p) for p in parts))

    def _versions(self, key_dir: Path) -> list[int]:
        try:
            names = os.listdir(key_dir)
        except FileNotFoundError:
            return []
        return sorted(int(n[1:]) for n in names if n.startswith("v") and n[1:].isdigit())

    def _save(self, meta: ModelMeta, artifact: bytes) -> ModelMeta:
        key_dir = self._key_dir(meta.key)
        key_dir.mkdir(parents=True, exist_ok=True)
        while True:
            # Never reuse a deleted version's number: servers tell versions apart by it.
            versions = self._versions(key_dir)
            highest = max(versions[-1] if versions else 0, self._highest(key_dir))
            meta = attrs.evolve(meta, version=highest + 1)
            tmp = self.root / ".tmp" / uuid.uuid4().hex
            tmp.mkdir()
            _fsync_write(tmp / MODEL_FILE, artifact)
            _fsync_write(tmp / META_FILE, json.dumps(meta.to_json(), indent=2).encode())
            try:
                os.rename(tmp, key_dir / _version_dir(meta.version))
            except OSError:  # another writer took this version number first
                shutil.rmtree(tmp, ignore_errors=True)
                continue
            self._write_highest(key_dir, meta.version)
            self._bump_generation()
            return meta

    def _highest(self, key_dir: Path) -> int:
        try:
            return int((key_dir / HIGHEST_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def _write_highest(self, key_dir: Path, version: int) -> None:
        tmp = self.root / ".tmp" / uuid.uuid4().hex
        _fsync_write(tmp, str(version).encode())
        if version > self._highest(key_dir):  # a racing writer may have stored a higher one
            os.replace(tmp, key_dir / HIGHEST_FILE)
        else:
            tmp.unlink()

    def _bump_generation(self) -> None:
        token = uuid.uuid4().hex
        _fsync_write(self.root / ".tmp" / token, token.encode())
        os.replace(self.root / ".tmp" / token, self.root / GENERATION_FILE)

    def _read_meta(self, version_dir: Path) -> ModelMeta:
        return ModelMeta.from_json(json.loads((version_dir / META_FILE).read_text("utf-8")))

    def _latest(self, key: ModelKey) -> ModelMeta | None:
        key_dir = self._key_dir(key)
        versions = self._versions(key_dir)
        return self._read_meta(key_dir / _version_dir(versions[-1])) if versions else None

    def _latest_versions(self, keys) -> dict[ModelKey, int]:
        found = {}
        for key in keys:
            versions = self._versions(self._key_dir(key))
            if versions:
                found[key] = versions[-1]
        return found

    def _list(self, account_id: str) -> list[ModelMeta]:
        account_dir = self.root / _segment(account_id)
        metas = []
        for meta_path in sorted(account_dir.glob(f"*/*/*/v*/{META_FILE}")):
            metas.append(self._read_meta(meta_path.parent))
        return metas

    def _delete(self, meta: ModelMeta) -> None:
        version_dir = self._key_dir(meta.key) / _version_dir(meta.version)
        trash = self.root / ".tmp" / f"deleted-{uuid.uuid4().hex}"
        try:
            os.rename(version_dir, trash)  # atomic: readers see it or not, never half of it
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)
        self._bump_generation()

    def _generation(self) -> str:
        try:
            return (self.root / GENERATION_FILE).read_text()
        except FileNotFoundError:
            return ""

    # Disk work runs in a thread so a slow disk never stalls the event loop.
    async def save(self, meta: ModelMeta, artifact: bytes) -> ModelMeta:
        return await asyncio.to_thread(self._save, meta, artifact)

    async def latest(self, key: ModelKey) -> ModelMeta | None:
        return await asyncio.to_thread(self._latest, key)

    async def latest_versions(self, keys) -> dict[ModelKey, int]:
        return await asyncio.to_thread(self._latest_versions, list(keys))

    async def read(self, meta: ModelMeta) -> bytes:
        path = self._key_dir(meta.key) / _version_dir(meta.version) / MODEL_FILE
        return await asyncio.to_thread(path.read_bytes)

    async def list(self, account_id: str) -> list[ModelMeta]:
        return await asyncio.to_thread(self._list, account_id)

    async def delete(self, meta: ModelMeta) -> None:
        await asyncio.to_thread(self._delete, meta)

    async def generation(self) -> str:
        return await asyncio.to_thread(self._generation)

    async def ping(self) -> None:
        # The folder is there and writable: what every save needs.
        if not await asyncio.to_thread(os.access, self.root, os.W_OK | os.X_OK):
            raise OSError(f"{self.root} is missing or not writable")

    async def close(self) -> None:
        pass


@attrs.frozen
class LocalDiskOptions:
    path: Path | None = attrs.field(default=None, metadata={
        "doc": "the folder of the models; default: data_dir/models"})


def _root(options: LocalDiskOptions, context: PluginContext) -> Path:
    return options.path or context.data_dir / "models"


def _create(options: LocalDiskOptions, context: PluginContext) -> LocalDiskModelStore:
    return LocalDiskModelStore(_root(options, context))


async def _backup(options: LocalDiskOptions, context: PluginContext, folder: Path) -> list[str]:
    from .backup import backup_models

    return await asyncio.to_thread(backup_models, _root(options, context), folder)


async def _restore(options: LocalDiskOptions, context: PluginContext, folder: Path,
                   dry_run: bool) -> list[str]:
    from .backup import restore_models

    return await asyncio.to_thread(restore_models, _root(options, context), folder, dry_run)


@hookimpl
def nember_model_stores():
    return [Provider(name="local_disk", create=_create, options=LocalDiskOptions, default=True,
                     backup=_backup, restore=_restore)]


