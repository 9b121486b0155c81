"""The ModelStore contract: versions that are never reused, read back byte for byte."""

from __future__ import annotations

import asyncio

import attrs
import pytest

from nember_core.records import ModelKey, ModelMeta, artifact_digest, utcnow

from ..stores import StoreContract, shared

KEY = ModelKey("acct_1", "momentum", "DecisionTree", "class")


def meta(key: ModelKey = KEY, artifact: bytes = b"model") -> ModelMeta:
    return ModelMeta(
        key=key, version=0, features=("close", "volume"), window=3, target="direction",
        classes=("down", "up"), family_version="1.5.0", params={"max_depth": 4},
        metrics={"accuracy": 0.61}, samples=1000, trained_at=utcnow(), training_seconds=0.4,
        artifact_sha256=artifact_digest(artifact),
    )


async def save(store, artifact: bytes, key: ModelKey = KEY) -> ModelMeta:
    return await store.save(meta(key, artifact), artifact)


class ModelStoreContract(StoreContract):
    """The model_store contract; subclass it with ``plugin_name`` and ``options``."""

    role = "model_store"
    pytestmark = pytest.mark.asyncio

    async def test_each_save_is_the_next_version_with_everything_kept(self, store):
        first = await save(store, b"one")
        described = meta(artifact=b"\x00two\xff" * 1000)
        second = await store.save(described, b"\x00two\xff" * 1000)
        assert (first.version, second.version) == (1, 2)
        latest = await store.latest(KEY)
        assert latest == second == attrs.evolve(described, version=2)  # every field, as saved
        assert await store.read(first) == b"one"
        assert await store.read(latest) == b"\x00two\xff" * 1000

    async def test_models_are_kept_apart_by_every_part_of_their_key(self, store):
        keys = [KEY, attrs.evolve(KEY, model_type="reg"), attrs.evolve(KEY, family="XGBoost"),
                attrs.evolve(KEY, strat="mean-reversion"), attrs.evolve(KEY, account_id="acct_2")]
        for i, key in enumerate(keys):
            await save(store, f"model {i}".encode(), key)
        for i, key in enumerate(keys):
            latest = await store.latest(key)
            assert latest.version == 1 and await store.read(latest) == f"model {i}".encode()
        assert {m.key for m in await store.list("acct_1")} == set(keys[:4])
        assert await store.latest(attrs.evolve(KEY, strat="nothing")) is None

    async def test_odd_names_are_stored_as_they_are(self, store):
        key = attrs.evolve(KEY, strat="../" + "é" * 150 + "/__proto__ 🚀" + "." * 100)
        saved = await save(store, b"odd", key)
        assert (await store.latest(key)).key.strat == key.strat
        assert await store.read(saved) == b"odd"

    async def test_latest_versions_answers_for_many_models_at_once(self, store):
        other = attrs.evolve(KEY, model_type="reg")
        await save(store, b"a")
        await save(store, b"b")
        await save(store, b"c", other)
        missing = attrs.evolve(KEY, strat="never-trained")
        assert await store.latest_versions([KEY, other, missing]) == {KEY: 2, other: 1}
        assert await store.latest_versions([]) == {}

    async def test_a_deleted_version_is_gone_and_its_number_never_comes_back(self, store):
        await save(store, b"v1")
        second = await save(store, b"v2")
        await store.delete(second)
        assert (await store.latest(KEY)).version == 1
        assert [m.version for m in await store.list("acct_1")] == [1]
        assert (await save(store, b"v3")).version == 3

    async def test_the_generation_changes_on_every_save_and_delete(self, store):
        seen = [await store.generation()]
        saved = await save(store, b"x")
        seen.append(await store.generation())
        await store.delete(saved)
        seen.append(await store.generation())
        assert len(set(seen)) == 3

    async def test_saves_racing_get_distinct_versions(self, store):
        saved = await asyncio.gather(*(save(store, f"m{i}".encode()) for i in range(8)))
        assert sorted(m.version for m in saved) == list(range(1, 9))
        for m in saved:
            assert await store.read(m) == f"m{saved.index(m)}".encode()

    async def test_what_one_node_saves_every_node_serves(self, open_store, provider):
        shared(provider)
        one, two = await open_store("node-1"), await open_store("node-2")
        before = await two.generation()
        saved = await save(one, b"trained on node 1")
        assert await two.generation() != before
        assert await two.latest_versions([KEY]) == {KEY: saved.version}
        assert await two.read(await two.latest(KEY)) == b"trained on node 1"

    async def test_an_open_store_answers_a_ping(self, store):
        await store.ping()  # what GET /readyz asks of every configured store
