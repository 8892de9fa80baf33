"""The collector pause that stage actors and training workers load their models under."""

from __future__ import annotations

import gc

import pytest

from pipelines.worker_setup import collector_paused


@pytest.fixture
def collector():
    yield
    gc.unfreeze()  # leave this test process's collector as it found it
    gc.enable()


def test_the_collector_is_off_while_loading_and_on_after_with_what_was_loaded_frozen(collector):
    frozen_before = gc.get_freeze_count()
    with collector_paused():
        assert not gc.isenabled()
        loaded = [[i] for i in range(1000)]  # stands in for a model's modules and weights
    assert gc.isenabled() and gc.get_freeze_count() >= frozen_before + len(loaded)


def test_the_collector_is_back_on_when_loading_fails(collector):
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("a model that cannot be loaded")
    assert gc.isenabled()
