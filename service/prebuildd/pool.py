"""The service's connection pool, and which of its connections it hands out.

After a database restart every pooled connection is dead: the server ended each session
(`57P01`, then EOF) while it sat idle in the pool. Handed out as it is, each one fails the
reconcile that got it, which is then redone as a retry -- the promotion that woke the service
after the restart among them. Checking every connection with a round trip before handing it
out would cost each reconcile that round trip, which over a network is a real share of a
promotion's latency. An idle connection of this pool has nothing to read (it does not LISTEN;
the listener has its own connection), so one that has become readable -- the server's
goodbye, or EOF -- is the one worth a real check: a zero-timeout poll of its socket picks
those out without a round trip, and only those get `check_connection` (an empty query), which
raises on a dead one so that the pool replaces it.
"""

from __future__ import annotations

import select
from typing import Any

from psycopg import AsyncConnection, OperationalError
from psycopg_pool import AsyncConnectionPool

__all__ = ["check_idle_connection", "make_pool"]


async def check_idle_connection(conn: AsyncConnection[Any]) -> None:
    """The pool's `check`: raise if `conn` is dead; a round trip only when it may be."""
    if conn.closed or conn.broken:
        raise OperationalError("the connection is closed")
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    if readable:
        await AsyncConnectionPool.check_connection(conn)


def make_pool(conninfo: str, *, min_size: int, max_size: int) -> AsyncConnectionPool:
    """The service's pool (not yet opened: `await pool.open()`)."""
    return AsyncConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        open=False,
        name="prebuildd",
        kwargs={"application_name": "prebuildd"},
        timeout=10.0,
        check=check_idle_connection,
    )
