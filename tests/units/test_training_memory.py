"""server.training_memory_mb: what the config accepts, and how a job that ran out of memory
or whose process died is told to its owner. The cap at work, on a real job, is in
tests/inprocess/test_training_jobs.py."""

from __future__ import annotations

import os

import pytest

from nember_core.config import parse_config
from nember_core.errors import InvalidData
from nember_core.plugins import collect_providers, plugin_manager
from nember_core.training.jobs import _one_thread, _ran_out_of_memory, died, out_of_memory

ADVICE = "use less data, a smaller window or smaller hyperparameters"
THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@pytest.mark.parametrize("value", [0, 512, 4096, 65536])
def test_no_cap_or_at_least_512_mb_is_accepted(value):
    config = parse_config({"server": {"training_memory_mb": value}}, None,
                          collect_providers(plugin_manager()))
    assert config.server.training_memory_mb == value


def test_the_default_is_4_gb():
    assert parse_config({}, None, collect_providers(plugin_manager())).server.training_memory_mb \
        == 4096


def _raised(exc: BaseException, wrapper: Exception | None = None) -> BaseException:
    """``exc`` as raised, or the ``wrapper`` a library raises while handling it."""
    try:
        try:
            raise exc
        except BaseException:
            if wrapper is None:
                raise
            raise wrapper from None
    except BaseException as caught:
        return caught


@pytest.mark.parametrize("exc", [
    _raised(MemoryError()),
    _raised(MemoryError(), ValueError("I/O operation on closed file.")),  # skops cleaning up
    _raised(ValueError("std::bad_alloc"),  # XGBoost's, as the trainer words it
            InvalidData("XGBoost could not be trained: std::bad_alloc")),
    _raised(RuntimeError("std::bad_alloc")),  # LightGBMError
    _raised(ImportError("libgomp.so.1: failed to map segment from shared object")),
    _raised(OSError(12, "Cannot allocate memory")),
])
def test_failed_allocations_are_recognised_beneath_what_libraries_raise(exc):
    assert _ran_out_of_memory(exc)


@pytest.mark.parametrize("exc", [
    _raised(ValueError("Input contains NaN")),
    _raised(InvalidData("the data has 3 rows, fewer than the window of 5")),
    _raised(InvalidData("feature 'f1' is not numeric (line 2: 'bad_alloc')")),  # user's data
])
def test_other_errors_are_not_taken_for_memory(exc):
    assert not _ran_out_of_memory(exc)


def test_the_messages_name_the_limit_and_the_setting():
    assert out_of_memory(1024) == (
        f"training ran out of memory (limit 1024 MB, server.training_memory_mb): {ADVICE}")
    assert out_of_memory(0) == f"training ran out of memory: {ADVICE}"
    assert died(-9, 4096) == (
        "the training process died (killed by SIGKILL) before it finished, most likely out of "
        f"memory (limit 4096 MB, server.training_memory_mb): {ADVICE}")
    assert died(-6, 0) == ("the training process died (killed by SIGABRT) before it finished, "
                           f"most likely out of memory: {ADVICE}")
    # OpenBLAS exits with 1 when an allocation fails
    assert died(1, 4096) == (
        "the training process died (exit code 1) before it finished, perhaps out of memory "
        f"(limit 4096 MB, server.training_memory_mb): {ADVICE}")


def test_a_job_process_starts_with_one_thread_and_the_servers_environment_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")  # the operator's, for the server
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    with _one_thread():
        assert [os.environ.get(name) for name in THREADS] == ["1", "1", "1"]
    assert [os.environ.get(name) for name in THREADS] == ["8", None, None]
