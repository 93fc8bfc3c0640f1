"""The LISTEN connection: turns notifications of `prebuildd_events` into `Event` callbacks.

Contract (what `service.py` relies on):

* One dedicated autocommit connection, outside the pool (a pooled connection could be
  recycled, silently dropping the LISTEN), `application_name = prebuildd-listener`.
* Order on every (re)connect: `LISTEN`, then `on_state(True)`, then `on_connected()`.
  LISTEN comes first so that nothing committed after the caller's full sweep starts can be
  missed; the sweep is needed because notifications sent while we were away are lost.
* Liveness: the connection must give a sign of life at least every `liveness_interval`
  seconds: a notification, or else a round trip (`listener_probe`, `SELECT 1`) sent after
  `liveness_interval` of silence, which must answer within `liveness_timeout`; otherwise the
  connection is treated as lost. A socket that is open but silent (a dropped NAT entry, a
  frozen server or backend) would otherwise look like a quiet night forever. So a freeze is
  noticed at most `liveness_interval + liveness_timeout` after the last sign of life (1 s +
  1 s by default), and the sweep after the reconnect reconciles whatever was missed.
  Cost on the server: nothing while notifications flow (they prove the connection alive),
  at most one `SELECT 1` per `liveness_interval` while the channel is silent. A
  self-addressed NOTIFY round trip (pgqueuer's health check) would test the delivery path
  too, but each one writes to the server's shared notification queue and, up to PostgreSQL
  18, signals every backend LISTENing in the database (Coder's pubsub listeners included);
  `SELECT 1` touches nothing shared.
* On any loss: `on_state(False)`, close, wait a capped exponential backoff with jitter
  (0.1 s doubling up to `max_backoff`), reconnect. The backoff resets once a session has
  given a sign of life (a notification or an answered probe), so a server that accepts and
  immediately drops us is not hammered.
* `on_state` reports edges only (connected <-> disconnected); failed attempts while already
  disconnected are logged, not reported again.
* Batches: the notifications of one transaction are sent together at its commit and arrive
  in one read; psycopg yields them one after another without waiting in between, and
  `on_event` is synchronous, so all of them are handed on before any other task runs (no
  await between two `_dispatch` calls of one read). The queue relies on this: its leading
  edge (G5, prebuildd.queue.settle) hands the first event on an idle queue out at once, and
  the others of the same commit are added before a consumer can take it, so they leave in
  the same batch (tests/integration/test_listener.py, one transaction's notifications).
* Garbage on the channel goes to `on_invalid(payload, reason)`; an exception raised by any
  callback is logged and swallowed. Only cancellation ends `run()`.
* Nothing logged carries a password: every exception text passes through `redact_dsn`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable

import anyio
import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from prebuildd.config import redact_dsn
from prebuildd.events import CHANNEL, Event, InvalidPayload, parse_payload
from prebuildd.queries import query

log = logging.getLogger(__name__)

APPLICATION_NAME = "prebuildd-listener"
CONNECT_TIMEOUT_SECONDS = 5

AsyncConnection = psycopg.AsyncConnection[TupleRow]


class ConnectionLost(Exception):
    """The listening connection stopped answering although the socket is still open."""


class Backoff:
    """Capped exponential delays with jitter: attempt n waits a random time in [d/2, d],
    d = min(initial * 2**n, maximum). The jitter spreads replicas that lost the same server."""

    def __init__(
        self,
        initial: float = 0.1,
        maximum: float = 10.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._initial = initial
        self._maximum = max(maximum, initial)
        self._rand = rand
        self._attempt = 0

    def next(self) -> float:
        ceiling = min(self._initial * 2.0**self._attempt, self._maximum)
        if ceiling < self._maximum:
            self._attempt += 1
        return ceiling / 2 + self._rand() * ceiling / 2

    def reset(self) -> None:
        self._attempt = 0


class Listener:
    def __init__(
        self,
        conninfo: str,
        *,
        on_event: Callable[[Event], None],
        on_connected: Callable[[], None],
        on_invalid: Callable[[str, str], None],
        on_state: Callable[[bool], None],
        liveness_interval: float = 1.0,
        liveness_timeout: float = 1.0,
        max_backoff: float = 10.0,
        channel: str = CHANNEL,
    ) -> None:
        self._conninfo = conninfo
        self._on_event = on_event
        self._on_connected = on_connected
        self._on_invalid = on_invalid
        self._on_state = on_state
        self._liveness_interval = liveness_interval
        self._liveness_timeout = liveness_timeout
        self._backoff = Backoff(maximum=max_backoff)
        self._channel = channel
        self._connected = False

    async def run(self) -> None:
        """Listen until cancelled, reconnecting after every loss."""
        try:
            while True:
                try:
                    await self._session()
                except Exception as exc:  # every failure means the same thing: reconnect
                    delay = self._backoff.next()
                    was = "lost its connection" if self._connected else "could not connect"
                    log.warning(
                        "event listener %s (%s); retrying in %.2fs", was, _describe(exc), delay
                    )
                    self._set_state(False)
                    await anyio.sleep(delay)
        finally:
            # Shutting down: readiness must not report a listener that no longer listens.
            self._set_state(False)

    # ---- one connection's lifetime ---------------------------------------------------------

    async def _session(self) -> None:
        conn = await self._connect()
        try:
            listen = query("listen_events").format(channel=sql.Identifier(self._channel))
            with anyio.fail_after(CONNECT_TIMEOUT_SECONDS):
                await conn.execute(listen)
            log.info("event listener connected, listening on %s", self._channel)
            self._set_state(True)
            self._call("on_connected", self._on_connected)
            await self._pump(conn)
        finally:
            # close() does not wait on the server, but shield it anyway: on cancellation
            # the socket must still be released.
            with anyio.CancelScope(shield=True):
                await conn.close()

    async def _connect(self) -> AsyncConnection:
        return await psycopg.AsyncConnection.connect(
            self._conninfo,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            application_name=APPLICATION_NAME,
        )

    async def _pump(self, conn: AsyncConnection) -> None:
        last_sign = time.monotonic()  # LISTEN just answered
        while True:
            silent_for = time.monotonic() - last_sign
            if silent_for >= self._liveness_interval:
                await self._probe(conn)
                last_sign = time.monotonic()
                self._backoff.reset()
                continue
            # notifies() returns when the wait is over, however busy the channel is.
            generator = conn.notifies(timeout=self._liveness_interval - silent_for)
            async with contextlib.aclosing(generator) as notifies:
                # No await in this body: a read's notifications go on in one turn (Batches).
                async for notify in notifies:
                    last_sign = time.monotonic()  # the connection is alive: no probe needed
                    self._backoff.reset()
                    if notify.channel == self._channel:
                        self._dispatch(notify.payload)

    async def _probe(self, conn: AsyncConnection) -> None:
        """One round trip, bounded: no answer in time (or a psycopg error) means a dead link."""
        try:
            with anyio.fail_after(self._liveness_timeout):
                await conn.execute(query("listener_probe"))
        except TimeoutError:
            raise ConnectionLost(
                f"no answer to the liveness probe within {self._liveness_timeout:g}s"
            ) from None

    # ---- callbacks ---------------------------------------------------------------------------

    def _dispatch(self, payload: str) -> None:
        try:
            event = parse_payload(payload)
        except InvalidPayload as exc:
            self._call("on_invalid", self._on_invalid, payload, str(exc))
            return
        self._call("on_event", self._on_event, event)

    def _set_state(self, connected: bool) -> None:
        if connected != self._connected:
            self._connected = connected
            self._call("on_state", self._on_state, connected)

    def _call(self, name: str, callback: Callable[..., None], *args: object) -> None:
        # The listener outlives any bug in its consumers: one bad event must not cost the
        # connection (and a full sweep) or, worse, end the loop.
        try:
            callback(*args)
        except Exception as exc:
            log.error("event listener callback %s failed: %s", name, _describe(exc))


def _describe(exc: BaseException) -> str:
    # psycopg puts the connection string in some messages (e.g. failed connects).
    text = str(exc).strip().replace("\n", " ")
    name = type(exc).__name__
    return redact_dsn(f"{name}: {text}" if text else name)
