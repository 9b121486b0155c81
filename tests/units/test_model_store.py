"""The local-disk model store and the families' file formats: versions, atomicity, tampering."""

from __future__ import annotations

import asyncio
import io
import zipfile

import numpy as np
import pytest
from nember_local_disk import LocalDiskModelStore

from nember_core.errors import ModelFileRejected
from nember_core.plugins import collect_families, plugin_manager
from nember_core.records import ModelKey, ModelMeta, utcnow

FAMILIES = collect_families(plugin_manager())


def meta(strat="s", family="DecisionTree", model_type="class") -> ModelMeta:
    return ModelMeta(
        key=ModelKey("acct_1", strat, family, model_type), version=0, features=("a", "b"),
        window=1, target="t", classes=(0, 1), family_version="x", params={}, metrics={},
        samples=10, trained_at=utcnow(), training_seconds=0.1,
    )


async def test_versions_count_up_and_latest_wins(tmp_path):
    store = LocalDiskModelStore(tmp_path)
    first = await store.save(meta(), b"one")
    second = await store.save(meta(), b"two")
    assert (first.version, second.version) == (1, 2)
    latest = await store.latest(first.key)
    assert latest == second
    assert await store.read(latest) == b"two"
    assert await store.read(first) == b"one"
    assert await store.latest(ModelKey("acct_1", "other", "DecisionTree", "class")) is None


async def test_concurrent_saves_get_distinct_versions(tmp_path):
    stores = [LocalDiskModelStore(tmp_path) for _ in range(4)]
    saved = await asyncio.gather(*(s.save(meta(), str(i).encode()) for i, s in enumerate(stores)))
    assert sorted(m.version for m in saved) == [1, 2, 3, 4]
    for m in saved:
        assert await stores[0].read(m) == str(saved.index(m)).encode()
    assert not any((tmp_path / ".tmp").iterdir())  # no half-written leftovers


async def test_generation_changes_on_save(tmp_path):
    store = LocalDiskModelStore(tmp_path)
    before = await store.generation()
    await store.save(meta(), b"x")
    assert await store.generation() != before


async def test_hostile_strategy_names_stay_inside_the_store(tmp_path):
    store = LocalDiskModelStore(tmp_path / "models")
    for strat in ["../../escape", "..", "a/b", "ü 💹", "."]:
        saved = await store.save(meta(strat=strat), b"x")
        assert (await store.latest(saved.key)).key.strat == strat
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]
    assert [m.key.strat for m in await store.list("acct_1")].count("..") == 1


def _fit(family_name, model_type="class"):
    family = FAMILIES[family_name]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] > 0).astype(np.int64) if model_type == "class" else X[:, 0] * 2
    return family, family.fit(X, y, model_type, {})


def test_a_skops_file_naming_a_foreign_type_is_refused():
    family, model = _fit("DecisionTree")
    data = family.dumps(model)
    # Rewrite the schema so the file claims an object of a non-scikit-learn type.
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            content = source.read(item.filename)
            if item.filename == "schema.json":
                content = content.replace(b'"sklearn.tree._classes"', b'"os"', 1).replace(
                    b'"DecisionTreeClassifier"', b'"system"', 1)
            target.writestr(item, content)
    with pytest.raises(ModelFileRejected):
        family.loads(out.getvalue(), "class")


# Every family's round trip and refusal of pickles: the family contract
# (tests/units/test_family_contract.py).


def test_a_model_of_the_wrong_type_is_refused():
    family, model = _fit("DecisionTree", "reg")
    with pytest.raises(ModelFileRejected):
        family.loads(family.dumps(model), "class")


async def test_names_too_long_for_a_file_name_are_stored_and_found(tmp_path):
    store = LocalDiskModelStore(tmp_path)
    long = meta(strat="é" * 200)  # 2,400 bytes once quoted: more than a file name may have
    saved = await store.save(long, b"model")
    assert (await store.latest(long.key)).key == long.key
    assert await store.latest_versions([long.key]) == {long.key: saved.version}
    assert [m.key for m in await store.list("acct_1")] == [long.key]
    assert await store.read(saved) == b"model"


async def test_a_deleted_versions_number_is_never_reused(tmp_path):
    store = LocalDiskModelStore(tmp_path)
    first = await store.save(meta(), b"one")
    second = await store.save(meta(), b"two")
    await store.delete(second)
    third = await store.save(meta(), b"three")
    assert (first.version, second.version, third.version) == (1, 2, 3)
    assert await store.latest_versions([first.key]) == {first.key: 3}
