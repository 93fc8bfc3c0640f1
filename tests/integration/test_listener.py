"""The LISTEN loop against a real PostgreSQL: delivery, reconnects, liveness, garbage, shutdown.

Intervals are shrunk (liveness every 0.2 s) so that every scenario, including a reconnect,
completes in well under a second.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import anyio
import psycopg
import pytest
from _proxy import FreezableProxy
from psycopg.rows import TupleRow

from prebuildd.events import CHANNEL, Event, EventKind, format_payload
from prebuildd.listener import APPLICATION_NAME, Backoff, Listener
from prebuildd.queue import WorkQueue

pytestmark = pytest.mark.anyio

AsyncConn = psycopg.AsyncConnection[TupleRow]
FAST = {"liveness_interval": 0.2, "liveness_timeout": 0.5, "max_backoff": 0.2}
WAIT = 60.0  # seconds; generous on a loaded machine, only reached when something is wrong


class Recorder:
    """Collects every callback of one Listener."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.invalid: list[tuple[str, str]] = []
        self.connected = 0
        self.states: list[bool] = []

    def listener(self, url: str, **overrides: Any) -> Listener:
        return Listener(
            url,
            on_event=self.events.append,
            on_connected=self._on_connected,
            on_invalid=lambda payload, reason: self.invalid.append((payload, reason)),
            on_state=self.states.append,
            **{**FAST, **overrides},
        )

    def _on_connected(self) -> None:
        self.connected += 1

    async def until(self, condition: Callable[[], bool], timeout: float = WAIT) -> None:
        with anyio.fail_after(timeout):
            while not condition():
                await anyio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(listener: Listener) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.run)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def sender(url: str) -> AsyncIterator[AsyncConn]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        yield conn


async def notify(conn: AsyncConn, payload: str) -> None:
    await conn.execute("SELECT pg_notify(%s, %s)", [CHANNEL, payload])


def claimed(template_id: UUID) -> str:
    return format_payload(Event(EventKind.CLAIMED, template_id, 1.0))


async def listener_pids(conn: AsyncConn) -> list[int]:
    cur = await conn.execute(
        "SELECT pid FROM pg_stat_activity"
        " WHERE application_name = %s AND datname = current_database()",
        [APPLICATION_NAME],
    )
    return [int(pid) for (pid,) in await cur.fetchall()]


# ---- delivery -------------------------------------------------------------------------------


async def test_connects_then_delivers_trigger_and_sent_events(db_url: str) -> None:
    rec = Recorder()
    template_id = uuid4()
    async with running(rec.listener(db_url)), sender(db_url) as conn:
        await rec.until(lambda: rec.connected == 1)
        assert rec.states == [True]
        await conn.execute(
            "INSERT INTO site_configs (key, value) VALUES ('prebuilds_settings', '{}')"
        )
        await notify(conn, claimed(template_id))
        await rec.until(lambda: len(rec.events) == 2)
    assert [(e.kind, e.template_id) for e in rec.events] == [
        (EventKind.SETTINGS_CHANGED, None),
        (EventKind.CLAIMED, template_id),
    ]
    assert rec.invalid == []
    # Leaving the task group cancelled run(): the service's readiness sees the listener go.
    assert rec.states == [True, False]


async def test_one_transactions_notifications_leave_the_queue_as_one_batch(db_url: str) -> None:
    # The queue's leading edge (G5, prebuildd.queue.settle) hands the first event on an idle
    # queue out at once; the listener must have added every notification of the same commit
    # before a waiting consumer gets to run, or the transaction would cost two reconciles.
    # The window is long: anything that missed the first batch would wait 30 s for it.
    queue: WorkQueue[UUID] = WorkQueue(settle=30.0)
    templates = [uuid4() for _ in range(20)]
    rec = Recorder()
    listener = Listener(
        db_url,
        on_event=lambda e: queue.add(e.template_id or uuid4(), event_at=e.event_at),
        on_connected=rec._on_connected,
        on_invalid=lambda payload, reason: rec.invalid.append((payload, reason)),
        on_state=rec.states.append,
        **FAST,
    )
    async with running(listener), sender(db_url) as conn:
        await rec.until(lambda: rec.connected == 1)
        async with conn.transaction():
            for template_id in templates:
                await notify(conn, claimed(template_id))
        with anyio.fail_after(WAIT):
            work = await queue.get(max_batch=100)
    assert sorted(work.keys) == sorted(templates)
    assert queue.depth() == 0
    assert rec.invalid == []


async def test_garbage_is_reported_and_the_loop_goes_on(db_url: str) -> None:
    rec = Recorder()
    template_id = uuid4()
    async with running(rec.listener(db_url)), sender(db_url) as conn:
        await rec.until(lambda: rec.connected == 1)
        await notify(conn, "not json")
        await notify(conn, '{"v":99,"k":"claimed"}')
        await notify(conn, claimed(template_id))
        await rec.until(lambda: len(rec.events) == 1)
    assert [payload for payload, _ in rec.invalid] == ["not json", '{"v":99,"k":"claimed"}']
    assert "not JSON" in rec.invalid[0][1]
    assert rec.events[0].template_id == template_id
    assert rec.connected == 1  # garbage never costs the connection


async def test_a_failing_callback_does_not_stop_the_listener(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    seen: list[Event] = []

    def flaky(event: Event) -> None:
        seen.append(event)
        if len(seen) == 1:
            raise RuntimeError("consumer bug")

    listener = rec.listener(db_url)
    listener._on_event = flaky
    async with running(listener), sender(db_url) as conn:
        await rec.until(lambda: rec.connected == 1)
        await notify(conn, claimed(uuid4()))
        await notify(conn, claimed(uuid4()))
        await rec.until(lambda: len(seen) == 2)
    assert rec.connected == 1
    assert "callback on_event failed: RuntimeError: consumer bug" in caplog.text


# ---- losing the connection ------------------------------------------------------------------


async def test_terminated_backend_reconnects_relistens_and_sweeps_again(db_url: str) -> None:
    rec = Recorder()
    template_id = uuid4()
    async with running(rec.listener(db_url)), sender(db_url) as conn:
        await rec.until(lambda: rec.connected == 1)
        (pid,) = await listener_pids(conn)
        await conn.execute("SELECT pg_terminate_backend(%s)", [pid])
        await rec.until(lambda: rec.connected == 2)
        assert rec.states == [True, False, True]
        (new_pid,) = await listener_pids(conn)
        assert new_pid != pid
        await notify(conn, claimed(template_id))
        await rec.until(lambda: len(rec.events) == 1)
    assert rec.events[0].template_id == template_id


async def test_failed_probe_means_reconnect(db_url: str) -> None:
    rec = Recorder()
    listener = rec.listener(db_url)
    real_probe = listener._probe
    failures = iter([True])

    async def probe(conn: AsyncConn) -> None:
        if next(failures, False):
            raise TimeoutError("no answer")
        await real_probe(conn)

    listener._probe = probe  # type: ignore[method-assign]
    async with running(listener), sender(db_url) as conn:
        await rec.until(lambda: rec.connected == 2)
        await notify(conn, claimed(uuid4()))
        await rec.until(lambda: len(rec.events) == 1)
    assert rec.states == [True, False, True, False]


async def test_open_but_silent_connection_is_detected(db_url: str) -> None:
    # A connection whose socket stays open but that answers nothing (a dropped NAT entry, a
    # hung server): only the liveness probe can notice. The listener connects through a
    # loopback proxy the test controls, which stops forwarding -- on any server.
    rec = Recorder()
    async with (
        FreezableProxy.running(db_url) as proxy,
        running(rec.listener(proxy.url)),
        sender(db_url) as conn,
    ):
        await rec.until(lambda: rec.connected == 1, timeout=WAIT)
        (silent,) = await listener_pids(conn)
        assert proxy.freeze() == 1, "the listener's one connection goes silent"
        # Detected within one interval plus the probe timeout (0.2 + 0.5 s); bounded
        # generously, the order of what happens is what is asserted.
        await rec.until(lambda: rec.connected == 2, timeout=WAIT)
        assert rec.states == [True, False, True]
        # The silent session was never closed by the server: it is still there, next to
        # the new one. Nothing but the probe could have told them apart.
        assert silent in await listener_pids(conn)
        assert len(await listener_pids(conn)) == 2
        await notify(conn, claimed(uuid4()))
        await rec.until(lambda: len(rec.events) == 1, timeout=WAIT)


async def test_probes_only_while_the_channel_is_silent(db_url: str) -> None:
    """Notifications prove the connection alive: no probe while they flow; after
    `liveness_interval` of silence, one probe per interval (the listener's whole load)."""
    rec = Recorder()
    listener = rec.listener(db_url, liveness_interval=1.0, liveness_timeout=1.0)
    probes: list[float] = []
    real_probe = listener._probe

    async def probe(conn: AsyncConn) -> None:
        probes.append(time.monotonic())
        await real_probe(conn)

    listener._probe = probe  # type: ignore[method-assign]
    async with running(listener), sender(db_url) as conn:
        await rec.until(lambda: rec.connected == 1)
        busy_from = len(probes)
        for _ in range(40):  # 2 s of traffic, a notification every 50 ms
            await notify(conn, claimed(uuid4()))
            await anyio.sleep(0.05)
        busy = len(probes) - busy_from
        quiet_from = len(probes)
        await anyio.sleep(2.6)
        quiet = len(probes) - quiet_from
    assert len(rec.events) == 40
    assert busy == 0, f"{busy} probes while notifications flowed"
    assert 1 <= quiet <= 3, f"{quiet} probes in 2.6 s of silence"
    assert rec.connected == 1


async def test_unreachable_server_is_retried_quietly_and_without_the_password(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.WARNING, logger="prebuildd.listener")
    rec = Recorder()
    url = f"postgresql://prebuildd:s3cret-pw@/prebuildd?host={tmp_path}&connect_timeout=1"

    def attempts() -> list[float]:
        """The delay each failed attempt announced ("...; retrying in 0.07s")."""
        found = [r.getMessage() for r in caplog.records if "could not connect" in r.getMessage()]
        return [float(m.rsplit("retrying in ", 1)[1].rstrip("s")) for m in found]

    async with running(rec.listener(url)):
        await rec.until(lambda: len(attempts()) >= 5)
    delays = attempts()
    # The backoff, from what the listener itself says it waits (not from wall time): the
    # first retry in [0.05, 0.1] s, each later one at most max_backoff (0.2 s) and never
    # under half of its doubling ceiling -- retried, but not hammered.
    assert 0.05 <= delays[0] <= 0.1
    ceilings = [min(0.1 * 2**n, FAST["max_backoff"]) for n in range(len(delays))]
    assert all(c / 2 - 0.005 <= d <= c + 0.005 for d, c in zip(delays, ceilings, strict=True))
    assert "s3cret-pw" not in caplog.text
    # Never connected: no edge to report, no sweep to run.
    assert rec.states == []
    assert rec.connected == 0


async def test_cancellation_closes_the_connection(db_url: str) -> None:
    rec = Recorder()
    async with sender(db_url) as conn:
        async with running(rec.listener(db_url)):
            await rec.until(lambda: rec.connected == 1)
            assert len(await listener_pids(conn)) == 1
        with anyio.fail_after(WAIT):
            while await listener_pids(conn):
                await anyio.sleep(0.01)


# ---- backoff (pure) -------------------------------------------------------------------------


def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets() -> None:
    lows = Backoff(initial=0.1, maximum=1.0, rand=lambda: 0.0)
    assert [lows.next() for _ in range(6)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5])
    highs = Backoff(initial=0.1, maximum=1.0, rand=lambda: 1.0)
    assert [highs.next() for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    highs.reset()
    assert highs.next() == pytest.approx(0.1)
