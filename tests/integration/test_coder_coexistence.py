"""prebuildd and Coder's built-in reconciler never reconcile at the same time.

Coder's loop takes advisory lock 7 (LockIDReconcilePrebuilds) exclusively, without waiting,
for its whole cycle; prebuildd takes it shared in every reconcile transaction.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from prebuildd import store

pytestmark = pytest.mark.anyio

CODER_LOCK_ID = 7


async def _lock(db_url: str, ids: list[uuid.UUID]) -> tuple[Any, list[uuid.UUID]]:
    conn = await psycopg.AsyncConnection.connect(db_url)
    return conn, await store.lock_templates(conn, ids)


async def test_a_running_coder_cycle_makes_every_template_busy(db_url: str) -> None:
    ids = [uuid.uuid4(), uuid.uuid4()]
    with psycopg.connect(db_url) as coder, coder.transaction():
        # Coder's cycle: TryAcquireLock(LockIDReconcilePrebuilds) in its transaction.
        assert coder.execute("SELECT pg_try_advisory_xact_lock(%s)", (CODER_LOCK_ID,)).fetchone()[0]
        conn, held = await _lock(db_url, ids)
        await conn.close()
        assert held == []
    conn, held = await _lock(db_url, ids)
    await conn.close()
    assert held == ids, "once Coder's cycle ends, prebuildd proceeds"


async def test_coder_skips_its_cycle_while_prebuildd_reconciles(db_url: str) -> None:
    ids = [uuid.uuid4()]
    first, held = await _lock(db_url, ids)
    second, also = await _lock(db_url, [uuid.uuid4()])
    try:
        assert held == ids and also, "prebuildd replicas share the guard"
        with psycopg.connect(db_url) as coder, coder.transaction():
            got = coder.execute("SELECT pg_try_advisory_xact_lock(%s)", (CODER_LOCK_ID,))
            assert got.fetchone() == (False,)
    finally:
        await first.close()
        await second.close()
