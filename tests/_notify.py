"""Checking what was (and was not) notified, without a time window.

"No notification arrived within 0.3 s" passes whenever delivery is slow, so it proves
nothing. Instead, a sentinel notification is sent on the same channel from another session
*after* the writes under test: PostgreSQL delivers notifications in commit order, so once the
sentinel has arrived, everything committed before it has arrived too. What came before the
sentinel is exactly what was notified; an empty list means nothing was.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

SENTINEL = "prebuildd-test-sentinel"


@dataclass
class Listening:
    """An autocommit session LISTENing on `channel` of the database at `url`."""

    url: str
    conn: psycopg.Connection[Any]
    channel: str

    @classmethod
    def open(cls, url: str, channel: str) -> Listening:
        conn = psycopg.connect(url, autocommit=True)
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        return cls(url, conn, channel)

    def close(self) -> None:
        self.conn.close()

    def received(self, timeout: float = 60.0) -> list[str]:
        """Payloads on the channel committed before this call, and only those, in order."""
        token = f"{SENTINEL}-{uuid.uuid4()}"
        with psycopg.connect(self.url, autocommit=True) as other:
            other.execute("SELECT pg_notify(%s, %s)", (self.channel, token))
        got: list[str] = []
        for notify in self.conn.notifies(timeout=timeout):
            if notify.channel != self.channel:
                continue
            if notify.payload == token:
                return got
            got.append(notify.payload)
        raise AssertionError(
            f"the sentinel notification did not arrive within {timeout:.0f}s; got {got}"
        )
