"""The service's pool after a database restart: it hands out only live connections, and a
healthy idle one without a round trip (service/prebuildd/pool.py)."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from prebuildd.pool import make_pool

pytestmark = pytest.mark.anyio

# What ending a pooled session looks like from the pool: a restart ends every one of them.
SESSIONS = (
    "SELECT pid FROM pg_stat_activity"
    " WHERE datname = current_database() AND application_name = 'prebuildd'"
)


def _end_pooled_sessions(url: str, expected: int) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        pids = [row[0] for row in admin.execute(SESSIONS).fetchall()]
        assert len(pids) == expected, pids
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        deadline = time.monotonic() + 30
        while admin.execute(SESSIONS).fetchall():
            assert time.monotonic() < deadline, "the sessions did not end"
            time.sleep(0.05)


async def _fill(pool: AsyncConnectionPool[Any], size: int) -> None:
    await pool.open(wait=True)
    # Every connection used once, so that each has been in the pool idle.
    held = [await pool.getconn() for _ in range(size)]
    for conn in held:
        await conn.execute("SELECT 1")
        await pool.putconn(conn)


async def test_after_the_sessions_end_every_connection_handed_out_works(db_url: str) -> None:
    pool = make_pool(db_url, min_size=2, max_size=2)
    try:
        await _fill(pool, 2)
        _end_pooled_sessions(db_url, 2)
        for _ in range(4):
            async with pool.connection() as conn:
                assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
    finally:
        await pool.close()


async def test_without_the_check_the_first_connection_handed_out_is_dead(db_url: str) -> None:
    """The control: the scenario above really hands out dead connections without the check."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        db_url, min_size=2, max_size=2, open=False,
        kwargs={"application_name": "prebuildd"},
    )  # fmt: skip
    try:
        await _fill(pool, 2)
        _end_pooled_sessions(db_url, 2)
        with pytest.raises(psycopg.OperationalError):
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
    finally:
        await pool.close()


async def test_a_healthy_idle_connection_is_handed_out_without_a_round_trip(
    db_url: str,
) -> None:
    pool = make_pool(db_url, min_size=1, max_size=1)
    try:
        await pool.open(wait=True)
        async with pool.connection() as conn:
            await conn.set_autocommit(True)  # so that the marker stays the session's last word
            await conn.execute("SELECT 'marker'")
            pid = conn.info.backend_pid
        async with pool.connection() as conn:
            assert conn.info.backend_pid == pid
        # The session's last statement is still ours: the check sent nothing (its probe would
        # be an empty query).
        async with await AsyncConnection.connect(db_url) as observer:
            row = await (
                await observer.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid])
            ).fetchone()
        assert row == ("SELECT 'marker'",)
    finally:
        await pool.close()
