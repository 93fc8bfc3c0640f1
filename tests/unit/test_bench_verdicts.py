"""The benches' verdicts can fail: service errors, misses and gaps in coverage make them MISSED.

Pure parts of bench/ (no server): what counts as an error line of the service under test,
which reconcile a promotion is credited to, how misses enter the percentiles, and when a
sweep counts as covering the fleet.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from uuid import UUID, uuid4

import pytest

# bench/ lives at the repository root, which is not on sys.path under the pytest script.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench._common import ServiceErrors, error_in_record
from bench.reaction import LogLine, acting_reconciles, percentile, with_misses
from bench.scale import Coverage

from prebuildd.reconciler import Cause, Outcome
from prebuildd.trigger import Trigger


@pytest.mark.parametrize(
    ("record", "is_error"),
    [
        ({"level": "info", "msg": "reconciled"}, False),
        ({"level": "warning", "msg": "ignored an invalid notification"}, False),
        ({"level": "error", "msg": "database error"}, True),
        ({"level": "critical", "msg": "anything"}, True),
        ({"level": "info", "msg": "event listener callback on_event failed: boom"}, True),
        ({"level": "warning", "msg": "reconcile crashed"}, True),
        ({"level": "warning", "msg": "x", "exc": "Traceback (most recent call last): ..."}, True),
        ({"msg": "Traceback (most recent call last):"}, True),  # raw stderr, not JSON
        ({"msg": "  File \"x.py\", line 1"}, False),
    ],
)
def test_what_counts_as_an_error_line(record: dict[str, str], is_error: bool) -> None:
    assert (error_in_record(record) is not None) is is_error


def test_an_error_line_turns_a_met_target_into_missed() -> None:
    errors = ServiceErrors().scan([{"level": "info", "msg": "reconciled"}])
    assert errors.verdict(True) and "none" in errors.summary()
    errors.scan([{"level": "error", "msg": "reconcile crashed"}])
    assert not errors.verdict(True)
    assert "MISSED" in errors.summary()


def test_errors_logged_in_process_are_collected_while_watching() -> None:
    errors = ServiceErrors()
    logger = logging.getLogger("prebuildd.somewhere")
    with errors.watching():
        logger.info("all good")
        logger.error("event listener callback on_event failed: %s", "boom")
        try:
            raise RuntimeError("bug")
        except RuntimeError:
            logger.exception("preset actions failed")
    logger.error("after the watch: not ours")
    assert len(errors.lines) == 2
    assert all(line.startswith("prebuildd.somewhere: ") for line in errors.lines)


def _line(at: float, **fields: object) -> LogLine:
    return LogLine(at, dict(fields))


def test_a_promotion_is_credited_to_the_reconcile_whose_preset_lines_follow_it() -> None:
    tpl_a, tpl_b = uuid4(), uuid4()
    new_a, new_b, old_a = uuid4(), uuid4(), uuid4()
    new_presets = {new_a: tpl_a, new_b: tpl_b}
    lines = [
        _line(1.0, msg="reconciled", trigger="event", template_id=str(tpl_a)),
        _line(1.0, msg="preset actions", preset_id=str(old_a), actions=["cancel_pending"]),
        _line(1.0, msg="preset actions", preset_id=str(new_a), actions=["create"]),
        _line(2.0, msg="reconciled", trigger="timer", template_id=None),  # a batch
        _line(2.0, msg="preset actions", preset_id=str(new_b), actions=["create"]),
        _line(3.0, msg="reconciled", trigger="event", template_id=str(tpl_b)),
        _line(3.0, msg="preset actions", preset_id=str(new_b), actions=["delete"]),
        _line(4.0, msg="reconciled", trigger="sweep"),  # nothing of ours
    ]
    acting = acting_reconciles(lines, new_presets)
    assert [(a.trigger, a.templates) for a in acting] == [
        ("event", frozenset({tpl_a})),
        ("timer", frozenset({tpl_b})),  # B's first create came from a timer: a miss
    ]


def test_misses_count_as_infinitely_slow() -> None:
    measured = [0.010] * 6
    judged = sorted(s * 1000 for s in with_misses(measured, misses=4))
    assert percentile(judged, 50) == pytest.approx(10.0)
    judged = sorted(s * 1000 for s in with_misses(measured, misses=7))
    assert math.isinf(percentile(judged, 50)), "more than half missed: the p50 is a miss"
    assert math.isinf(percentile(sorted(with_misses(measured, misses=1)), 99))


def _outcome(locked: tuple[UUID, ...] = (), busy: tuple[UUID, ...] = ()) -> Outcome:
    return Outcome(Cause(Trigger.CLI), locked=locked, busy=busy)


def test_a_sweep_counts_only_when_it_reconciled_every_template() -> None:
    a, b = uuid4(), uuid4()
    full = Coverage(frozenset({a, b}))
    full.check("one", [_outcome((a,)), _outcome((b,))])
    assert full.met

    partial = Coverage(frozenset({a, b}))
    partial.check("one", [_outcome((a,)), _outcome((), busy=(b,))])
    assert not partial.met and "1 busy" in partial.summary()

    empty = Coverage(frozenset())
    empty.check("one", [])
    assert not empty.met, "a fleet that lists nothing measured nothing"
    assert not Coverage(frozenset({a})).met, "no sweep timed"
