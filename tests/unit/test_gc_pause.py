"""deferred_collection: the collector is off inside, back on after the last overlapping use,
and left off when the application had switched it off. SweepFreezer: the heap frozen once a
sweep is reconciled, cycles of the previous freeze collected first."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from uuid import uuid4

import pytest

from prebuildd.gc_pause import SweepFreezer, deferred_collection


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    was = gc.isenabled()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_off_inside_on_after() -> None:
    gc.enable()
    with deferred_collection():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_back_on_after_an_error() -> None:
    gc.enable()
    with pytest.raises(RuntimeError), deferred_collection():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_overlapping_uses_resume_after_the_last() -> None:
    gc.enable()
    first, second = deferred_collection(), deferred_collection()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # not nested: the first ends before the second
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled()


def test_a_collector_switched_off_stays_off() -> None:
    gc.disable()
    with deferred_collection():
        assert not gc.isenabled()
    assert not gc.isenabled()


# ---- SweepFreezer ------------------------------------------------------------------------------


@pytest.fixture
def _thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


class _Node:
    """An object in a reference cycle with itself: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.mark.usefixtures("_thawed")
def test_freezes_once_every_template_of_the_sweep_is_reconciled() -> None:
    a, b, c = uuid4(), uuid4(), uuid4()
    freezer = SweepFreezer()
    freezer.reconciled([a])  # no sweep yet: nothing to wait for
    freezer.swept([a, b, c])
    freezer.reconciled([a])
    freezer.reconciled([uuid4()])  # a template the sweep did not list
    assert (freezer.freezes, gc.get_freeze_count()) == (0, 0)
    freezer.reconciled([b, c])
    assert freezer.freezes == 1
    assert gc.get_freeze_count() > 0
    freezer.reconciled([a, b, c])  # done with that sweep: no second freeze
    assert freezer.freezes == 1


@pytest.mark.usefixtures("_thawed")
def test_a_newer_sweep_replaces_the_wait_and_an_empty_one_waits_for_nothing() -> None:
    a, b = uuid4(), uuid4()
    freezer = SweepFreezer()
    freezer.swept([a, b])
    freezer.swept([b])  # the next sweep listed only b
    freezer.reconciled([b])
    assert freezer.freezes == 1
    freezer.swept([])
    freezer.reconciled([a])
    assert freezer.freezes == 1


@pytest.mark.usefixtures("_thawed")
def test_a_cycle_frozen_by_one_sweep_is_collected_by_the_next_freeze() -> None:
    t = uuid4()
    freezer = SweepFreezer()
    node = _Node()
    alive = weakref.ref(node)
    freezer.swept([t])
    freezer.reconciled([t])  # frozen with the cycle still in use
    del node
    gc.collect()
    assert alive() is not None  # frozen: the collector does not look at it
    freezer.swept([t])
    freezer.reconciled([t])  # the next freeze unfreezes and collects first
    assert alive() is None
