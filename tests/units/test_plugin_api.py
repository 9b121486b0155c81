"""The plugin API's promises, through the real plugin manager: defaults chosen by flag,
unshared stores refused by --workers, hooks checked, families' predictors as records."""

from __future__ import annotations

import time

import pytest

from nember_core.app.nember import Nember
from nember_core.app.supervisor import check_shareable
from nember_core.errors import ConfigError
from nember_core.plugin_api import Provider, hookimpl, new_id
from tests.harness import write_config


class _SecondDefaultKeyStore:
    @hookimpl
    def nember_key_stores(self):
        return [Provider(name="other", create=lambda options, context: None, default=True)]


class _MisspeltHook:
    @hookimpl
    def nember_key_store(self):  # no such hook: must be an error, not silence
        return []


def test_a_role_without_plugin_uses_the_provider_flagged_default(tmp_path):
    nember = Nember.load(str(write_config(tmp_path)))
    picked = {role: nember.provider(role).name for role in nember.providers}
    assert picked == {"key_store": "sqlite", "billing": "sqlite", "model_store": "local_disk",
                      "connection_registry": "sqlite", "jobs": "sqlite"}


def test_two_defaults_for_one_role_stop_start_up(tmp_path):
    with pytest.raises(ConfigError, match="two plugins claim to be the default key_store"):
        Nember.load(str(write_config(tmp_path)), extra_plugins=[_SecondDefaultKeyStore()])


def test_a_misspelt_hook_is_an_error(tmp_path):
    with pytest.raises(Exception, match="unknown hook 'nember_key_store'"):
        Nember.load(str(write_config(tmp_path)), extra_plugins=[_MisspeltHook()])


def test_workers_refuse_a_store_that_is_not_shared_across_processes(tmp_path):
    nember = Nember.load(str(write_config(
        tmp_path, connection_registry={"plugin": "memory"}, server={"port": 8765})))
    assert not nember.provider("connection_registry").shared_across_processes
    with pytest.raises(ConfigError, match="'memory' keeps each process's state to itself; "
                                          r"2 workers need a shared one \(redis, sqlite\)"):
        check_shareable(nember, 2, 8765)
    shared = Nember.load(str(write_config(tmp_path / "shared", server={"port": 8765})))
    check_shareable(shared, 2, 8765)  # the defaults are shared: no error


async def test_stores_open_from_their_providers_and_close(tmp_path):
    nember = Nember.load(str(write_config(tmp_path)))
    stores = await nember.open()
    try:
        assert stores.node and await stores.jobs.read("job_nope") is None
        assert await stores.model_store.latest_versions([]) == {}
    finally:
        await stores.close()


class _FamilyWithoutParameters:
    name = "Old"
    library_version = "old 1.0"

    def fit(self, X, y, model_type, params): ...
    def dumps(self, model): ...
    def loads(self, data, model_type): ...
    def predictor(self, model, model_type): ...
    def predict(self, model, model_type, X): ...


class _OldFamilyPlugin:
    @hookimpl
    def nember_model_families(self):
        return [_FamilyWithoutParameters()]


def test_a_family_that_lacks_part_of_the_interface_is_refused_at_start_up(tmp_path):
    with pytest.raises(ConfigError, match="the model family 'Old' lacks parameters"):
        Nember.load(str(write_config(tmp_path)), extra_plugins=[_OldFamilyPlugin()])


def test_ids_made_later_sort_after_and_never_repeat():
    # Stores index these (billing's connection ids above all): an index of ids that grow with
    # time is written at its end, where random ids would touch a page per row.
    spaced = []
    for _ in range(20):
        spaced.append(new_id("conn"))
        time.sleep(0.002)
    assert spaced == sorted(spaced)
    burst = [new_id("conn") for _ in range(10_000)]  # many in one millisecond: still distinct
    assert len(set(burst)) == len(burst)
    assert all(made.startswith("conn_") for made in burst)
