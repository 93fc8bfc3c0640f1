"""The dispatcher without a database: Work -> Cause, and `follow_up`, the one path back into
the queue (timers, busy retries, error retries, a failed sweep's retry), and the worker loop
around a reconciler that succeeds or fails.

The queue is the real one on a fake clock (tests/unit/_queue_support.py); the reconciler and
the connection are stand-ins, which is all a test of *what goes back into the queue* needs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any
from uuid import UUID

import anyio
import psycopg
import pytest
from _queue_support import FakeClock, all_blocked

from prebuildd.clock import DatabaseClock
from prebuildd.collector import MetricsCollector
from prebuildd.dispatcher import (
    BUSY_RETRY_SECONDS,
    SWEEP_RETRY_SECONDS,
    Dispatcher,
    SweepFailed,
    cause_of,
    sweep_trigger,
)
from prebuildd.metrics import Metrics
from prebuildd.queue import KeyMeta, Work, WorkQueue
from prebuildd.reconciler import Cause, Outcome
from prebuildd.trigger import Trigger

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
A, B, C = UUID(int=1), UUID(int=2), UUID(int=3)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def meta(*triggers: Trigger, events: int = 1, event_at: float | None = None) -> KeyMeta:
    return KeyMeta(0.0, event_at, events, frozenset(triggers))


def work(**metas: KeyMeta) -> Work[UUID]:
    by_key = {UUID(int=int(k[1:])): m for k, m in metas.items()}
    return Work(tuple(by_key), MappingProxyType(by_key))


# ---- Work -> Cause ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("triggers", "expected"),
    [
        ({Trigger.TIMER, Trigger.EVENT}, Trigger.EVENT),
        ({Trigger.SWEEP, Trigger.STARTUP}, Trigger.STARTUP),
        ({Trigger.RETRY, Trigger.TIMER}, Trigger.TIMER),
        ({Trigger.RETRY, Trigger.SWEEP}, Trigger.SWEEP),
        ({Trigger.RETRY}, Trigger.RETRY),
        ({Trigger.CLI}, Trigger.CLI),
    ],
)
def test_the_most_telling_trigger_names_a_batch(triggers: set[Trigger], expected: Trigger) -> None:
    # Spread over two keys: the batch is named by the union of its keys' triggers.
    first, *rest = sorted(triggers)
    assert cause_of(work(k1=meta(first), k2=meta(*(rest or [first])))).trigger is expected


def test_a_cause_sums_the_adds_and_keeps_the_earliest_event() -> None:
    cause = cause_of(
        work(
            k1=meta(Trigger.EVENT, events=3, event_at=20.0),
            k2=meta(Trigger.EVENT, events=2, event_at=10.0),
            k3=meta(Trigger.TIMER),
        )
    )
    assert cause == Cause(Trigger.EVENT, events=6, event_at=10.0)


def test_a_sweep_is_named_startup_then_overflow_then_sweep() -> None:
    assert sweep_trigger(meta(Trigger.STARTUP, Trigger.RETRY)) is Trigger.STARTUP
    assert sweep_trigger(meta(Trigger.EVENT, Trigger.OVERFLOW)) is Trigger.OVERFLOW
    assert sweep_trigger(meta(Trigger.EVENT)) is Trigger.SWEEP
    assert sweep_trigger(meta(Trigger.RETRY)) is Trigger.SWEEP


# ---- follow_up: the one path back into the queue --------------------------------------------


class FakeReconciler:
    """Returns (or raises) what the test queued up, and remembers what it was asked."""

    def __init__(self) -> None:
        self.results: list[Outcome | BaseException] = []
        self.calls: list[tuple[list[UUID], Cause]] = []

    async def reconcile(self, conn: Any, template_ids: Sequence[UUID], cause: Cause) -> Outcome:
        self.calls.append((list(template_ids), cause))
        result = self.results.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result


class FlakySweep:
    """Fails its first `failures` listings, then succeeds (queueing nothing); remembers when
    and how it was called."""

    def __init__(self, clock: FakeClock, failures: int = 1) -> None:
        self.clock = clock
        self.failures = failures
        self.calls: list[Trigger] = []
        self.at: list[float] = []
        self.periodic: list[bool] = []

    async def sweep(self, conn: Any, trigger: Trigger, *, periodic: bool = False) -> None:
        self.calls.append(trigger)
        self.at.append(self.clock.now)
        self.periodic.append(periodic)
        if len(self.calls) <= self.failures:
            raise psycopg.errors.InsufficientPrivilege("permission denied for table templates")


@contextlib.asynccontextmanager
async def no_connection() -> AsyncIterator[Any]:
    yield None


def make(
    clock: FakeClock, *, one_pass: bool = False, sweep_failures: int = 1
) -> tuple[WorkQueue[UUID], Dispatcher, FakeReconciler, MetricsCollector]:
    queue: WorkQueue[UUID] = WorkQueue(settle=0, clock=clock, sleep=clock.sleep)
    reconciler = FakeReconciler()
    collector = MetricsCollector(Metrics())
    dispatcher = Dispatcher(
        queue,
        reconciler,  # type: ignore[arg-type]
        FlakySweep(clock, sweep_failures),
        max_batch=10,
        collector=None if one_pass else collector,
        monotonic=clock,
        sleep=clock.sleep,
    )
    return queue, dispatcher, reconciler, collector


def handed_out(queue: WorkQueue[UUID]) -> dict[UUID, frozenset[Trigger]]:
    work = queue.get_nowait(100)
    if work is None:
        return {}
    queue.done(work)
    return {k: m.triggers for k, m in work.meta.items()}


@pytest.mark.anyio
async def test_timers_and_busy_retries_come_back_at_their_time(clock: FakeClock) -> None:
    queue, dispatcher, _, _ = make(clock)
    outcome = Outcome(Cause(Trigger.EVENT), locked=(A,), busy=(B,))
    outcome.next_attention = {A: NOW + timedelta(seconds=30)}
    outcome.clock = DatabaseClock(NOW, clock.now)
    dispatcher.follow_up(outcome)
    assert queue.depth() == 2
    await clock.advance(BUSY_RETRY_SECONDS - 0.5)
    assert handed_out(queue) == {}
    await clock.advance(0.5)
    assert handed_out(queue) == {B: {Trigger.RETRY}}
    await clock.advance(30 - BUSY_RETRY_SECONDS)
    assert handed_out(queue) == {A: {Trigger.TIMER}}


@pytest.mark.anyio
async def test_templates_dealt_room_under_the_pending_job_cap_are_woken(clock: FakeClock) -> None:
    queue, dispatcher, _, _ = make(clock)
    dispatcher.follow_up(Outcome(Cause(Trigger.EVENT), locked=(A,), wake=(B, C)))
    await clock.advance(0.1)  # the settle window
    assert handed_out(queue) == {B: {Trigger.THROTTLE}, C: {Trigger.THROTTLE}}


@pytest.mark.anyio
async def test_timers_run_on_the_database_clock_not_the_hosts(clock: FakeClock) -> None:
    """A timer is due when the *database's* clock reaches `next_attention`: the delay is
    measured from the outcome's reading of the server's clock, less the (monotonic) time
    that passed since it was read; no wall clock enters (issue 10 item 10)."""
    queue, dispatcher, _, _ = make(clock)
    # The plans were made 4 s ago (monotonic), when the database's clock read NOW; the host's
    # wall clock, an hour off, is never consulted.
    read_at = clock.now
    await clock.advance(4)
    outcome = Outcome(Cause(Trigger.EVENT), locked=(A, B))
    outcome.clock = DatabaseClock(NOW, read_at)
    outcome.next_attention = {A: NOW + timedelta(seconds=10), B: NOW + timedelta(seconds=3)}
    dispatcher.follow_up(outcome)
    assert handed_out(queue) == {B: {Trigger.TIMER}}, "already due on the database's clock"
    await clock.advance(6 - 0.25)
    assert handed_out(queue) == {}
    await clock.advance(0.25)
    assert handed_out(queue) == {A: {Trigger.TIMER}}


def test_an_outcome_with_timers_but_no_database_clock_is_refused(clock: FakeClock) -> None:
    _, dispatcher, _, _ = make(clock)
    outcome = Outcome(Cause(Trigger.EVENT), locked=(A,))
    outcome.next_attention = {A: NOW}
    with pytest.raises(ValueError, match="database clock"):
        dispatcher.follow_up(outcome)


@pytest.mark.anyio
async def test_error_retries_double_per_template_until_it_succeeds(clock: FakeClock) -> None:
    queue, dispatcher, _, _ = make(clock)
    waits = []
    for _ in range(3):
        dispatcher.follow_up(Outcome(Cause(Trigger.EVENT), failed=(C,), error=RuntimeError()))
        started = clock.now
        while not handed_out(queue):
            await clock.advance(0.25)
        waits.append(clock.now - started)
    assert waits == [0.5, 1.0, 2.0]
    dispatcher.follow_up(Outcome(Cause(Trigger.RETRY), locked=(C,)))  # it worked: reset
    dispatcher.follow_up(Outcome(Cause(Trigger.EVENT), failed=(C,), error=RuntimeError()))
    await clock.advance(0.5)
    assert handed_out(queue) == {C: {Trigger.RETRY}}


def test_a_failed_sweep_is_not_retried_as_the_exclusive_marker(clock: FakeClock) -> None:
    """Retried as the marker, a listing that fails at once held the queue in a loop (issue 10
    item 7): the retry belongs to the sweep loop, and the queue keeps what it holds."""
    queue, dispatcher, _, _ = make(clock)
    queue.add(A, trigger=Trigger.RETRY, delay=5)
    dispatcher.follow_up(SweepFailed(Trigger.STARTUP))
    assert not queue.sweep_queued()
    assert queue.depth() == 1  # A's own retry delay is not absorbed by a sweep


@pytest.mark.anyio
async def test_one_pass_puts_nothing_back(clock: FakeClock) -> None:
    queue, dispatcher, _, _ = make(clock, one_pass=True)
    outcome = Outcome(Cause(Trigger.CLI), locked=(A,), busy=(B,), failed=(C,))
    outcome.next_attention = {A: NOW}
    outcome.clock = DatabaseClock(NOW, clock.now)
    dispatcher.follow_up(outcome)
    dispatcher.follow_up(SweepFailed(Trigger.CLI))
    assert queue.depth() == 0 and not queue.sweep_queued()


# ---- the worker loop -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_failed_reconcile_is_observed_done_and_retried(clock: FakeClock) -> None:
    queue, dispatcher, reconciler, collector = make(clock)
    seen: list[Outcome] = []
    dispatcher.on_outcome.append(seen.append)
    reconciler.results = [
        psycopg.OperationalError("server closed the connection"),
        Outcome(Cause(Trigger.RETRY), locked=(A,)),
    ]
    queue.add(A, event_at=5.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher.worker, no_connection)
        await all_blocked()
        assert len(seen) == 1 and seen[0].failed == (A,) and seen[0].locked == ()
        assert queue.processing() == 0  # done, whatever happened
        assert reconciler.calls == [([A], Cause(Trigger.EVENT, events=1, event_at=5.0))]
        await clock.advance(0.5)  # the error retry
        tg.cancel_scope.cancel()
    assert [ids for ids, _ in reconciler.calls] == [[A], [A]]
    assert reconciler.calls[1][1].trigger is Trigger.RETRY
    metrics = collector.metrics.registry
    assert metrics.get_sample_value("prebuildd_reconcile_errors_total", {"kind": "database"})
    assert metrics.get_sample_value("prebuildd_reconciles_total", {"trigger": "retry"}) == 1


@pytest.mark.anyio
async def test_a_sweep_marker_whose_listing_fails_is_retried(clock: FakeClock) -> None:
    queue, dispatcher, _, collector = make(clock)
    sweeper = dispatcher._sweeper
    assert isinstance(sweeper, FlakySweep)
    queue.request_sweep(trigger=Trigger.STARTUP)
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher.worker, no_connection)
        tg.start_soon(dispatcher.sweep_periodically, 3600.0, no_connection)
        await all_blocked()
        assert sweeper.calls == [Trigger.STARTUP]  # not again at once
        assert not queue.sweep_queued() and not queue.sweep_running()
        await clock.advance(SWEEP_RETRY_SECONDS)
        tg.cancel_scope.cancel()
    # Retried a second later by the sweep loop, under its own name, and it worked.
    assert sweeper.calls == [Trigger.STARTUP, Trigger.STARTUP]
    assert sweeper.periodic == [False, False]
    errors = collector.metrics.registry.get_sample_value(
        "prebuildd_reconcile_errors_total", {"kind": "sweep"}
    )
    assert errors == 1
    assert collector.readiness().sweep_failing is None


class Reconciles:
    """A reconciler that succeeds for every batch and remembers when each template ran."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.ran: list[tuple[float, UUID, Trigger]] = []

    async def reconcile(self, conn: Any, template_ids: Sequence[UUID], cause: Cause) -> Outcome:
        self.ran += [(self.clock.now, t, cause.trigger) for t in template_ids]
        return Outcome(cause, locked=tuple(template_ids))


@pytest.mark.anyio
async def test_a_sweep_that_keeps_failing_backs_off_and_never_blocks_event_work(
    clock: FakeClock,
) -> None:
    """Issue 10 item 7: a startup sweep whose listing fails at once (permission denied after
    an upgrade) must not spin. It is retried after 1, 2, 4... s up to 30 s; events are
    reconciled meanwhile; a template's own retry delay survives; /readyz says why."""
    queue, dispatcher, _, collector = make(clock, sweep_failures=7)
    reconciles = Reconciles(clock)
    dispatcher._reconciler = reconciles  # type: ignore[assignment]
    sweeper = dispatcher._sweeper
    assert isinstance(sweeper, FlakySweep)
    queue.request_sweep(trigger=Trigger.STARTUP)
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher.worker, no_connection)
        tg.start_soon(dispatcher.sweep_periodically, 3600.0, no_connection)
        await all_blocked()  # the marker failed once, and nothing spins
        queue.add(A, event_at=1.0, urgent=True)  # a promotion
        queue.add(B, trigger=Trigger.RETRY, delay=5.0)  # a template's error retry
        await all_blocked()
        assert reconciles.ran == [(0.0, A, Trigger.EVENT)]
        for _ in range(60):
            await clock.advance(1)
        assert collector.readiness().sweep_failing is not None
        for _ in range(40):
            await clock.advance(1)
        assert collector.readiness().sweep_failing is None  # the 8th attempt worked
        tg.cancel_scope.cancel()
    assert sweeper.at == [0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 61.0, 91.0]
    assert (5.0, B, Trigger.RETRY) in reconciles.ran, "B's retry kept its own delay"


@pytest.mark.anyio
async def test_sweeps_failing_repeatedly_make_readyz_say_why(clock: FakeClock) -> None:
    queue, dispatcher, _, collector = make(clock, sweep_failures=3)
    queue.request_sweep(trigger=Trigger.STARTUP)
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher.worker, no_connection)
        tg.start_soon(dispatcher.sweep_periodically, 3600.0, no_connection)
        await all_blocked()
        await clock.advance(1)
        state = collector.readiness()
        assert state.sweep_failing is None, "two failures are not yet a failing path"
        await clock.advance(2)
        state = collector.readiness()
        assert state.sweep_failing == (
            "3 sweeps in a row failed; the last: InsufficientPrivilege (42501): "
            "permission denied for table templates"
        )
        collector.database_reachable(True)
        collector.listener_state(True)
        assert not state.ready and collector.readiness().body()["sweep"] == "failing"
        await clock.advance(4)  # the 4th attempt succeeds
        assert collector.readiness().sweep_failing is None and collector.readiness().ready
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_due_periodic_sweep_stands_for_a_pending_retry(clock: FakeClock) -> None:
    _, dispatcher, _, _ = make(clock, sweep_failures=1)
    sweeper = dispatcher._sweeper
    assert isinstance(sweeper, FlakySweep)
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher.sweep_periodically, 10.0, no_connection)
        await clock.advance(10)  # the periodic sweep fails: a retry in 1 s
        await clock.advance(1)
        await clock.advance(9)  # next periodic at 20 (counted from the start of the last)
        tg.cancel_scope.cancel()
    assert sweeper.at == [10.0, 11.0, 20.0]
    assert sweeper.periodic == [True, True, True]  # a retry of the periodic sweep is one too


@pytest.mark.anyio
async def test_one_pass_raises_the_error_and_still_gives_the_work_back(clock: FakeClock) -> None:
    queue, dispatcher, reconciler, _ = make(clock, one_pass=True)
    reconciler.results = [psycopg.OperationalError("connection lost")]
    queue.add(A, delay=0)
    queue.shutdown()
    with pytest.raises(psycopg.OperationalError, match="connection lost"):
        await dispatcher.worker(no_connection)
    assert queue.processing() == 0
