"""deferred_collection: the collector is off inside, back on after the last overlapping use,
and left off when the application had switched it off."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from prebuildd.gc_pause import deferred_collection


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
