"""Damaged model files never reach a library's decoder: truncations and byte flips of every
family's files are refused by their digest, in a child process, so that a crash would fail
this test instead of killing the test runner."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from nember_core.plugin_api import ModelFileRejected, ModelKey, ModelMeta, utcnow
from nember_core.plugins import collect_families, plugin_manager
from nember_core.records import artifact_digest
from nember_core.serving.model_loader import load_model


def _corruptions(data: bytes, seed: int = 0):
    rng = np.random.default_rng(seed)
    for cut in np.linspace(0, len(data) - 1, 12).astype(int):
        yield f"truncated at {cut}", data[:cut]
    for _ in range(20):
        flipped = bytearray(data)
        for at in rng.integers(0, len(data), 3):
            flipped[at] ^= 0xFF
        yield "three bytes flipped", bytes(flipped)


def _check_every_family() -> list[str]:
    """Runs in a child process: what was not refused as it should be."""
    problems = []
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 4))
    y = (X[:, 0] > 0).astype(np.int64)
    for name, family in sorted(collect_families(plugin_manager()).items()):
        if not getattr(family, "trainable", True):
            continue  # no fit: its files come from elsewhere (the digest check is the same)
        data = family.dumps(family.fit(X, y, "class", {}))
        meta = ModelMeta(
            key=ModelKey("acct", "s", name, "class"), version=1, features=("a", "b"),
            window=2, target="t", classes=(0, 1), family_version="x", params={}, metrics={},
            samples=200, trained_at=utcnow(), training_seconds=0.1,
            artifact_sha256=artifact_digest(data),
        )
        load_model(family, meta, data, None)  # the intact file loads
        for what, damaged in _corruptions(data):
            try:
                load_model(family, meta, damaged, None)
            except ModelFileRejected as exc:
                if "damaged" not in str(exc):
                    problems.append(f"{name}, {what}: {exc}")
            else:
                problems.append(f"{name}, {what}: loaded")
    return problems


def test_every_familys_damaged_files_are_refused_before_decoding():
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as child:
        # A crash inside a library would raise BrokenProcessPool here: a failure, not a kill.
        assert child.submit(_check_every_family).result(timeout=300) == []
