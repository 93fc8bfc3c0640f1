"""How the store's modules talk to PostgreSQL: the connection types and sending a named query.

Every statement is a named query of sql/queries/*.sql (prebuildd.queries), sent on a cursor of
its own with tuple rows and a database span.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import TupleRow, tuple_row

from prebuildd.queries import operation, query
from prebuildd.telemetry import db_span

Conn = AsyncConnection[Any]
Row = TupleRow
# Where the service's loops get a connection for one piece of work (`pool.connection`).
Connect = Callable[[], AbstractAsyncContextManager[Conn]]


async def start(conn: Conn, name: str, params: Mapping[str, object]) -> AsyncCursor[Row]:
    """Send a named query on its own cursor (results are read later, e.g. after a pipeline)."""
    # Tuple rows whatever row factory the caller's connection uses.
    cursor = conn.cursor(row_factory=tuple_row)
    with db_span(name, operation(name)):
        await cursor.execute(query(name), params)
    return cursor


async def fetch(conn: Conn, name: str, params: Mapping[str, object]) -> list[Row]:
    cursor = await start(conn, name, params)
    return await cursor.fetchall()


def unique(ids: Iterable[UUID]) -> list[UUID]:
    """Duplicates removed, first occurrence kept (the order callers see results in)."""
    return list(dict.fromkeys(ids))
