"""A promotion sent into a frozen LISTEN connection is reconciled (issue 10 item 12).

The real service, with the production liveness settings (Settings() defaults), on a real
PostgreSQL. The listener's backend is stopped (SIGSTOP, found through pg_stat_activity): its
socket stays open and answers nothing, so the promotion's notification goes nowhere. The
listener must notice the silence, reconnect, and the sweep after the reconnect must reconcile
the promotion. The test asserts that outcome and the path it took (a reconnect, the
notification never counted, the reconcile named by the sweep); the time it took is printed,
not asserted (run with -s; `bench/frozen_listener.py` measures it over many freezes, against
the 3 s target). Before the fix (a probe every 5 s, 2 s to answer) it measured 4-7 s.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from _freeze import LISTENER_PIDS, frozen
from _live import (
    CANCELED_CREATES,
    PENDING_CREATES,
    eventually,
    fast_settings,
    fetch_value,
    running_service,
)

from factories import make_org, make_preset, make_template, make_version, promote
from prebuildd.config import Settings
from prebuildd.service import Service

pytestmark = pytest.mark.anyio


async def _holds(value: bool) -> bool:
    return value


def _metric(service: Service, name: str, **labels: str) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_promotion_sent_into_a_frozen_listener_is_reconciled(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        old = make_preset(conn, tpl.version_id, name="dev", desired=1)
        v2 = make_version(conn, tpl.id, active=False)
        new = make_preset(conn, v2, name="dev", desired=1)
        conn.commit()
    production = Settings()
    settings = fast_settings(
        liveness_interval=production.liveness_interval,
        liveness_timeout=production.liveness_timeout,
        reconnect_max_backoff=production.reconnect_max_backoff,
    )

    async def count(statement: str, preset: Any, n: int) -> bool:
        return bool(await fetch_value(db_url, statement, {"preset": preset}) == n)

    async with running_service(db_url, settings) as service:
        # No provisioner: v1's create stays pending, and the promotion has work to do.
        await eventually(lambda: count(PENDING_CREATES, old, 1), timeout=20)
        # Quiet: nothing is queued that could find the promotion by chance. (The create is
        # the service's own write, which no event echoes back: prebuildd.execute_actions.)
        queue = service.queue
        await eventually(lambda: _holds(queue.depth() == 0 == queue.processing()))
        pids = await fetch_value(db_url, LISTENER_PIDS)
        assert pids is not None and len(pids) == 1, pids
        heard = _metric(service, "prebuildd_events_received_total", kind="version_promoted")
        sweeps = _metric(service, "prebuildd_reconciles_total", trigger="sweep")

        with frozen(db_url, pids[0]):
            with psycopg.connect(db_url) as conn:
                promote(conn, tpl.id, v2)
                conn.commit()
            promoted = time.monotonic()

            async def reconciled() -> bool:
                return await count(CANCELED_CREATES, old, 1) and await count(
                    PENDING_CREATES, new, 1
                )

            # Generous: this bounds a hang, it does not judge the speed.
            await eventually(reconciled, timeout=30, interval=0.02)
            took = time.monotonic() - promoted

        print(f"\npromotion into a frozen listener reconciled after {took:.2f} s")
        assert _metric(service, "prebuildd_listener_reconnects_total") >= 1
        assert _metric(service, "prebuildd_reconciles_total", trigger="sweep") > sweeps
        # The notification went into the frozen backend and was never received.
        assert (
            _metric(service, "prebuildd_events_received_total", kind="version_promoted") == heard
        )
