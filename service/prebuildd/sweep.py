"""The sweep: every template that has prebuild presets, queued for a reconcile.

One mechanism, whoever asks for it:

* the service: at startup (the listener's first connection), after every reconnect, every
  `--sweep-interval`, on a global event (the pause switch) and when the queue overflowed;
* the CLI: `prebuildd reconcile --once [--dry-run]` and `prebuildd status` (`sweep_once`).
  A dry run (`status` is one) is read-only end to end: READ ONLY connections, and reconciles
  that take no lock (prebuildd.reconciler), so an operator who looks never makes a replica or
  Coder's loop wait, and sees every template, those being reconciled elsewhere marked busy.

A sweep is one read (`store.list_prebuild_templates`) and one queue add per template, carrying
the sweep's trigger. Reconciling them is the dispatcher's ordinary work: its workers take the
templates out of the queue in batches of `max_batch` (one transaction each, set-based reads),
as many batches at once as there are workers, and never two reconciles of one template at
once (the queue's G2). So a sweep never collides with event-driven work of the same replica,
and it coalesces with what is already queued instead of doing it twice.

Requests that come from synchronous callbacks (the listener's) go through the queue's sweep
marker (`Sweeper.request`); a worker that receives the marker runs `Sweeper.sweep`. The
periodic sweep, and the retries of a sweep whose listing failed, call `Sweeper.sweep` directly
(prebuildd.dispatcher), so they never stall event work while in-flight reconciles finish, as
the exclusive marker would.

The service's sweeper also checks the event source first (`check_triggers`): are the triggers
of sql/triggers/ all there and enabled (prebuildd.event_source)? One catalog read in a
transaction of its own, reported to `on_check`; a check that fails is reported too and never
fails the sweep.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from uuid import UUID

import anyio
import psycopg

from prebuildd import event_source, store
from prebuildd.config import CODER_NOTIFICATION_DEFAULTS, NotificationDelivery, Settings
from prebuildd.dispatcher import Dispatcher
from prebuildd.event_source import TriggerCheck
from prebuildd.model import PlanConfig
from prebuildd.queue import WorkQueue
from prebuildd.reconciler import Outcome, Reconciler
from prebuildd.trigger import Trigger

# Templates per transaction: the service's own batch size (big enough for set-based reads,
# small enough to keep locks short).
BATCH = Settings().max_batch
# The CLI's batches in flight at once, each on its own connection: while Python turns one
# batch's rows into plans, PostgreSQL reads the next (the service's workers overlap the same
# way).
LANES = 2


@dataclass(frozen=True, slots=True)
class Swept:
    """What one sweep queued."""

    trigger: Trigger
    # Every template with a preset that wants prebuilds, by id.
    templates: tuple[UUID, ...]
    # time.monotonic() when the listing started and when it came back.
    started: float
    listed: float
    # The periodic safety net (or a retry of it); not a startup, reconnect, global-event,
    # overflow or CLI sweep.
    periodic: bool = False


class Sweeper:
    def __init__(self, queue: WorkQueue[UUID], *, check_triggers: bool = False) -> None:
        self._queue = queue
        self._check_triggers = check_triggers
        # Called after every sweep's listing, once its templates are queued.
        self.on_sweep: list[Callable[[Swept], None]] = []
        # Called before every sweep's listing with the event triggers' check, or the database
        # error that kept it from being made (only with `check_triggers`).
        self.on_check: list[Callable[[TriggerCheck | psycopg.Error], None]] = []

    def request(self, trigger: Trigger) -> None:
        """Ask for a sweep from synchronous code: the next free worker runs it (queue G8)."""
        self._queue.request_sweep(trigger=trigger)

    async def sweep(self, conn: store.Conn, trigger: Trigger, *, periodic: bool = False) -> Swept:
        """List every template with prebuild presets and queue each one with `trigger`."""
        if self._check_triggers:
            await self.check_triggers(conn)
        started = time.monotonic()
        ids = await store.list_prebuild_templates(conn)
        swept = Swept(trigger, tuple(ids), started, time.monotonic(), periodic)
        for template_id in ids:
            # Not urgent: a template reconciled within the cooldown waits for its end.
            self._queue.add(template_id, trigger=trigger, delay=0.0)
        for hook in self.on_sweep:
            hook(swept)
        return swept

    async def check_triggers(self, conn: store.Conn) -> TriggerCheck | psycopg.Error:
        """Check the event source on `conn` and report it to `on_check`; never raises a
        database error (a failed check must not cost the sweep)."""
        result: TriggerCheck | psycopg.Error
        try:
            # A transaction (or savepoint) of its own: a failure leaves `conn` usable.
            async with conn.transaction():
                result = await event_source.check(conn)
        except psycopg.Error as exc:
            result = exc
        for hook in self.on_check:
            hook(result)
        return result


async def sweep_once(
    url: str,
    config: PlanConfig,
    dry_run: bool,
    *,
    notifications: NotificationDelivery = CODER_NOTIFICATION_DEFAULTS,
    batch: int = BATCH,
    lanes: int = LANES,
) -> list[Outcome]:
    """Reconcile (or only plan) every template with prebuild presets, once: the CLI's sweep.

    The same sweep and dispatcher as the service's, on a queue of its own (no settle window,
    no cooldown) drained by `lanes` workers, each on a connection of its own; one pass, so
    nothing is retried and a database error is raised as itself. Outcomes are in batch order
    (templates by id), whichever lane ran them.
    """
    queue: WorkQueue[UUID] = WorkQueue(settle=0.0)
    sweeper = Sweeper(queue)
    reconciler = Reconciler(config, dry_run=dry_run, notifications=notifications)
    dispatcher = Dispatcher(queue, reconciler, sweeper, max_batch=batch)
    outcomes: list[Outcome] = []
    dispatcher.on_outcome.append(outcomes.append)
    async with await _connect(url, read_only=dry_run) as conn:
        swept = await sweeper.sweep(conn, Trigger.CLI)
        await conn.commit()
        # Everything is queued: the workers hand out every batch, then stop (queue G9).
        queue.shutdown()
        batches = -(-len(swept.templates) // batch)
        lanes = max(1, min(lanes, batches))
        await _in_lanes(url, conn, lanes, dispatcher.worker, read_only=dry_run)
    position = {template_id: n for n, template_id in enumerate(swept.templates)}
    return sorted(outcomes, key=lambda o: min(position[t] for t in (*o.locked, *o.busy)))


async def _in_lanes(
    url: str,
    conn: store.Conn,
    lanes: int,
    work: Callable[[store.Connect], Awaitable[None]],
    *,
    read_only: bool,
) -> None:
    """Run `work` on `conn` and on `lanes - 1` more connections of its own, concurrently."""

    async def extra_lane() -> None:
        async with await _connect(url, read_only=read_only) as lane_conn:
            await work(_lend(lane_conn))

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(lanes - 1):
                tg.start_soon(extra_lane)
            await work(_lend(conn))
    except BaseExceptionGroup as group:
        # Callers handle a database error as such (the CLI prints it), not as a group.
        raise _first_error(group) from None


def _lend(conn: store.Conn) -> store.Connect:
    """A `Connect` that hands out the same connection each time (one lane, one connection)."""

    @contextlib.asynccontextmanager
    async def lent() -> AsyncIterator[store.Conn]:
        yield conn

    return lent


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    error = group.exceptions[0]
    return _first_error(error) if isinstance(error, BaseExceptionGroup) else error


async def _connect(url: str, *, read_only: bool) -> store.Conn:
    conn = await psycopg.AsyncConnection.connect(url, application_name="prebuildd-cli")
    if read_only:
        # Every transaction of this connection starts READ ONLY (BEGIN READ ONLY).
        await conn.set_read_only(True)
    return conn
