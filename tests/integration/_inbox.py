"""A LISTENing session for the trigger tests: what the triggers sent, read deterministically.

Silence is checked without a timeout: `drain` sends a sentinel notification after the writes
and reads up to it. Notifications are delivered in commit order, so anything the writes
produced arrives before the sentinel.
"""

from __future__ import annotations

import uuid
from uuid import UUID

import psycopg
from psycopg.rows import TupleRow

from prebuildd.events import CHANNEL, Event, EventKind, parse_payload

Conn = psycopg.Connection[TupleRow]


class Inbox:
    """A LISTENing session; `drain()` returns the payloads committed since the last drain."""

    def __init__(self, url: str) -> None:
        self.conn: Conn = psycopg.connect(url, autocommit=True)
        self.conn.execute("LISTEN prebuildd_events")
        self._sentinels = 0

    def drain_raw(self) -> list[str]:
        self._sentinels += 1
        token = f"sentinel-{self._sentinels}-{uuid.uuid4()}"
        self.conn.execute("SELECT pg_notify(%s, %s)", [CHANNEL, token])
        received: list[str] = []
        for notify in self.conn.notifies(timeout=60.0):  # returns at the sentinel
            if notify.payload == token:
                return received
            received.append(notify.payload)
        raise AssertionError(f"sentinel never arrived; got {received}")

    def drain(self) -> list[Event]:
        return [parse_payload(payload) for payload in self.drain_raw()]

    def kinds(self) -> list[tuple[EventKind, UUID | None]]:
        return [(event.kind, event.template_id) for event in self.drain()]

    def close(self) -> None:
        self.conn.close()
