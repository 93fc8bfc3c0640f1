"""The churn drill's checker must catch what it claims to catch (pure, no processes)."""

from __future__ import annotations

import uuid

from _db import Pool
from _invariants import InvariantChecker

P = uuid.uuid4()


def pool(desired: int, live: int, creates: int, *, active: bool = True, claims: int = 0) -> Pool:
    return Pool(P, desired, active, live, creates, claims, failed=0)


def test_a_legitimate_history_passes() -> None:
    c = InvariantChecker(window=10)
    assert c.observe(0.0, {P: pool(2, 0, 0)}) == []
    assert c.observe(1.0, {P: pool(2, 2, 2)}) == []
    assert c.observe(2.0, {P: pool(2, 1, 2, claims=1)}) == []  # claimed
    assert c.observe(3.0, {P: pool(2, 2, 3, claims=1)}) == []  # replaced
    assert c.observe(4.0, {P: pool(0, 2, 3, claims=1)}) == []  # lowered; deletes pending
    assert c.observe(5.0, {P: pool(0, 0, 3, claims=1)}) == []
    assert c.observe(6.0, {P: pool(1, 1, 4, claims=1)}) == []  # raised again
    assert c.raises(P) == 3


def test_overfilling_beyond_the_window_is_caught() -> None:
    c = InvariantChecker(window=10)
    c.observe(0.0, {P: pool(3, 3, 3)})
    c.observe(1.0, {P: pool(1, 3, 3)})
    assert c.observe(10.5, {P: pool(1, 3, 3)}) == []  # desired 3 was in force 9.5 s ago
    [violation] = c.observe(11.5, {P: pool(1, 3, 3)})
    assert violation.startswith("I1")


def test_an_inactive_preset_has_a_zero_target() -> None:
    c = InvariantChecker(window=1)
    c.observe(0.0, {P: pool(2, 2, 2)})
    c.observe(0.5, {P: pool(2, 2, 2, active=False)})
    [violation] = c.observe(2.0, {P: pool(2, 1, 2, active=False)})
    assert violation.startswith("I1")


def test_a_deficit_filled_twice_is_caught_even_when_not_overfilled() -> None:
    c = InvariantChecker(window=10)
    c.observe(0.0, {P: pool(2, 2, 2)})
    # One claim, but two replicas both replaced it; one replacement was then deleted as
    # surplus, so the pool looks right while the history does not.
    [violation] = c.observe(1.0, {P: pool(2, 2, 4, claims=1)})
    assert violation.startswith("I2")
