"""`prebuildd run`: the wiring. Pool, task group, signals, HTTP probes, health; nothing else.

    listener --Event--> queue --Work--> dispatcher --> reconciler --> store
       |                  ^                 |
       +-- sweeps ------->+<-- follow_up ---+--> collector (metrics, logs, plans, readiness)

The listener only *wakes* templates; the database is the truth, and a sweep at start, after
every reconnect and every `sweep_interval` covers anything a lost notification missed.
docs/architecture.md has the picture in full; each module's docstring says what it owns.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from uuid import UUID

import anyio
import psycopg
from anyio.abc import TaskStatus

from prebuildd.collector import MetricsCollector, describe_error
from prebuildd.config import Settings
from prebuildd.dispatcher import Dispatcher
from prebuildd.events import Event
from prebuildd.gc_pause import SweepFreezer
from prebuildd.http import HttpServerHandle, Readiness, start_http_server
from prebuildd.listener import Listener
from prebuildd.metrics import Metrics
from prebuildd.pool import make_pool
from prebuildd.queries import query
from prebuildd.queue import WorkQueue
from prebuildd.reconciler import Reconciler
from prebuildd.sweep import Sweeper
from prebuildd.telemetry import set_db_namespace
from prebuildd.trigger import Trigger

log = logging.getLogger(__name__)

# On SIGTERM, how long reconciles in flight may run to their commit before being rolled back.
SHUTDOWN_GRACE_SECONDS = 3.0
# The pool's health probe (the `database` check of /readyz): how often, and how long it may
# take. Apart from the listener's liveness probe, which must be quick to notice a frozen
# LISTEN connection; this one only reports.
HEALTH_PROBE_SECONDS = 5.0
HEALTH_PROBE_TIMEOUT_SECONDS = 3.0


class Service:
    def __init__(
        self,
        settings: Settings,
        conninfo: str,
        *,
        metrics: Metrics | None = None,
        queue: WorkQueue[UUID] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """`queue` replaces the one built from `settings` (benches instrument their own).

        `clock` is this host's wall clock; plans, writes and timers never read it, they run on
        the database's clock (prebuildd.clock). It only dates an event's lag until the first
        reconcile has read the database's clock.
        """
        self.settings = settings
        self.conninfo = conninfo
        self.metrics = metrics or Metrics()
        if queue is None:
            settle, cooldown = settings.settle, settings.cooldown
            queue = WorkQueue(settle=settle.total_seconds(), cooldown=cooldown.total_seconds())
        self.queue = queue
        self.metrics.queue_depth.set_function(self.queue.depth)
        self.collector = MetricsCollector(self.metrics)
        # Every sweep checks the event triggers first (prebuildd.event_source).
        self.sweeper = Sweeper(self.queue, check_triggers=True)
        # A sweep lists every template that has prebuilds: the plans of others are stale, and
        # the periodic sweep's templates are audited for work no event announced.
        self.sweeper.on_sweep.append(
            lambda swept: self.collector.swept(swept.templates, periodic=swept.periodic)
        )
        self.sweeper.on_check.append(self.collector.event_triggers)
        self.dispatcher = Dispatcher(
            self.queue,
            Reconciler(settings.plan, clock=clock, notifications=settings.notifications),
            self.sweeper,
            max_batch=settings.max_batch,
            collector=self.collector,
        )
        # The fleet's state leaves the collected generations once a sweep is reconciled.
        freezer = SweepFreezer()
        self.sweeper.on_sweep.append(lambda swept: freezer.swept(swept.templates))
        self.dispatcher.on_outcome.append(
            lambda outcome: freezer.reconciled((*outcome.locked, *outcome.reconciling))
        )
        self.pool = make_pool(
            conninfo, min_size=settings.pool_min_size, max_size=settings.pool_max_size
        )
        self._http: HttpServerHandle | None = None
        self._connected_before = False

    async def run(
        self,
        *,
        handle_signals: bool = True,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until cancelled (or SIGTERM/SIGINT when `handle_signals`), then stop cleanly."""
        s = self.settings
        await self.pool.open(wait=False)
        if s.metrics_addr:
            self._http = start_http_server(s.metrics_addr, self.metrics, self.readiness)
        connect = self.pool.connection
        try:
            async with anyio.create_task_group() as tg:
                if handle_signals:
                    tg.start_soon(self._handle_signals, tg.cancel_scope)
                tg.start_soon(self._listener().run)
                for _ in range(s.concurrency):
                    tg.start_soon(self.dispatcher.worker, connect)
                sweep_every = s.sweep_interval.total_seconds()
                tg.start_soon(self.dispatcher.sweep_periodically, sweep_every, connect)
                refresh_every = s.metrics_refresh_seconds
                tg.start_soon(self.collector.refresh_periodically, refresh_every, connect)
                tg.start_soon(self._health_loop)
                task_status.started()
        finally:
            await self._shutdown()

    @property
    def http_port(self) -> int | None:
        return self._http.port if self._http else None

    def readiness(self) -> Readiness:
        return self.collector.readiness()

    async def _handle_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("shutting down", extra={"signal": signal.Signals(signum).name})
                # Take no new work; let reconciles in flight commit (they are short), and
                # cancel (roll back) whatever is still running after the grace period.
                self.queue.shutdown()
                if not await self.queue.drain(SHUTDOWN_GRACE_SECONDS):
                    log.warning("in-flight reconciles rolled back at shutdown")
                scope.cancel()
                return

    async def _shutdown(self) -> None:
        self.queue.shutdown()
        with anyio.CancelScope(shield=True):
            # Cancellation already rolled back any open reconcile transaction (psycopg rolls
            # back a transaction block left by an exception); closing returns the sockets.
            await self.pool.close(timeout=5.0)
            if self._http is not None:
                self._http.close()
        log.info("stopped")

    # ---- the listener: events into the queue ----------------------------------------------

    def _listener(self) -> Listener:
        s = self.settings
        return Listener(
            self.conninfo,
            on_event=self._on_event,
            on_connected=self._on_connected,
            on_invalid=self.collector.invalid_event,
            on_state=self.collector.listener_state,
            liveness_interval=s.liveness_interval.total_seconds(),
            liveness_timeout=s.liveness_timeout.total_seconds(),
            max_backoff=s.reconnect_max_backoff.total_seconds(),
        )

    def _on_event(self, event: Event) -> None:
        self.collector.event_received(event.kind)
        if event.template_id is None:
            # A global change (the pause setting): every template may be affected.
            self.sweeper.request(Trigger.SWEEP)
            return
        self.queue.add(
            event.template_id,
            trigger=Trigger.EVENT,
            event_at=event.event_at,
            urgent=event.kind.is_urgent,
        )

    def _on_connected(self) -> None:
        # Notifications sent while we were not listening are lost: look at everything.
        if self._connected_before:
            self.collector.listener_reconnected()
            self.sweeper.request(Trigger.SWEEP)
        else:
            self._connected_before = True
            self.sweeper.request(Trigger.STARTUP)

    # ---- health --------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        while True:
            try:
                with anyio.fail_after(HEALTH_PROBE_TIMEOUT_SECONDS):
                    async with self.pool.connection() as conn:
                        await conn.execute(query("ping"))
                        set_db_namespace(conn.info.dbname)
                self.collector.database_reachable(True)
            except psycopg.Error as exc:
                self.collector.database_reachable(False, describe_error(exc))
            except TimeoutError:
                why = f"no answer to the health probe within {HEALTH_PROBE_TIMEOUT_SECONDS:g}s"
                self.collector.database_reachable(False, why)
            await anyio.sleep(HEALTH_PROBE_SECONDS)
