"""A sweep that keeps failing, in the real service on a real PostgreSQL (issue 10 item 7).

The sweep's listing hits a real statement timeout (the database cancels it: QueryCanceled,
SQLSTATE 57014), the way a slow catalog after an upgrade or a lock would; the rest of the
service is untouched. Before the fix the startup sweep re-queued itself at once as the queue's
exclusive marker: it spun, absorbed every event, and /readyz stayed 200.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import anyio
import psycopg
import pytest
from _live import PENDING_CREATES, eventually, fetch_value, running_service

from factories import make_org, make_preset, make_template, make_version, promote
from prebuildd import store, sweep

pytestmark = pytest.mark.anyio


class TimedOutListing:
    """`store.list_prebuild_templates`, but while `failing` the database cancels it."""

    def __init__(self) -> None:
        self.failing = True
        self.attempts: list[float] = []
        self._real = store.list_prebuild_templates

    async def __call__(self, conn: store.Conn) -> list[Any]:
        self.attempts.append(time.monotonic())
        if self.failing:
            await conn.execute("SELECT set_config('statement_timeout', '1', true)")
            await conn.execute("SELECT pg_sleep(1)")  # canceled by the server after 1 ms
        return await self._real(conn)


def _readyz(port: int | None) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def test_a_failing_sweep_backs_off_events_go_on_and_readyz_says_why(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        make_preset(conn, tpl.version_id, name="dev", desired=1)
        v2 = make_version(conn, tpl.id, active=False)
        new = make_preset(conn, v2, name="dev", desired=2)
        conn.commit()
    listing = TimedOutListing()
    monkeypatch.setattr(sweep.store, "list_prebuild_templates", listing)

    async def pending(preset: Any, n: int) -> bool:
        return bool(await fetch_value(db_url, PENDING_CREATES, {"preset": preset}) == n)

    async with running_service(db_url) as service:
        port = service.http_port
        await eventually(lambda: _true(len(listing.attempts) >= 1))

        # A promotion while every sweep fails: its event is reconciled all the same.
        with psycopg.connect(db_url) as conn:
            promote(conn, tpl.id, v2)
            conn.commit()
        await eventually(lambda: pending(new, 2), timeout=15)

        async def unready() -> bool:
            status, body = await anyio.to_thread.run_sync(_readyz, port)
            return status == 503 and body.get("sweep") == "failing"

        await eventually(unready, timeout=20)
        status, body = await anyio.to_thread.run_sync(_readyz, port)
        assert status == 503 and body["ready"] is False
        assert (body["database"], body["listener"], body["reconciles"]) == ("ok", "ok", "ok")
        why = body["why"]["sweep"]
        assert why.endswith(
            " sweeps in a row failed; the last: QueryCanceled (57014): "
            "canceling statement due to statement timeout"
        ), why

        # Backed off: each wait at least as long as its 1, 2, 4... s delay, never a spin.
        gaps = [b - a for a, b in zip(listing.attempts, listing.attempts[1:], strict=False)]
        assert len(gaps) >= 2
        for n, gap in enumerate(gaps):
            assert gap >= 0.9 * min(30.0, 2.0**n), (n, gaps)

        # The cause goes away: the next retry works, and the replica is ready again.
        listing.failing = False

        async def ready() -> bool:
            return (await anyio.to_thread.run_sync(_readyz, port))[0] == 200

        await eventually(ready, timeout=30)
        errors = service.metrics.registry.get_sample_value(
            "prebuildd_reconcile_errors_total", {"kind": "sweep"}
        )
        assert errors == len(listing.attempts) - 1


async def _true(value: bool) -> bool:
    return value
