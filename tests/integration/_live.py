"""Helpers to run the real service (and the simulated provisioner) inside a test's event loop."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import anyio
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from prebuildd.config import Settings
from prebuildd.provisioner import ProvisionerConfig, SimulatedProvisioner
from prebuildd.service import Service


def fast_settings(**overrides: Any) -> Settings:
    """Settings for tests: no periodic sweep (events must carry everything), short probes."""
    base = Settings(
        sweep_interval=timedelta(hours=1),
        metrics_addr="127.0.0.1:0",
        liveness_interval=timedelta(seconds=1),
        liveness_timeout=timedelta(seconds=1),
        reconnect_max_backoff=timedelta(milliseconds=500),
        pool_min_size=1,
        pool_max_size=4,
    )
    return replace(base, **overrides)


@contextlib.asynccontextmanager
async def running_service(
    url: str, settings: Settings | None = None, **kwargs: Any
) -> AsyncIterator[Service]:
    service = Service(settings or fast_settings(), url, **kwargs)
    async with anyio.create_task_group() as tg:
        await tg.start(_run_service, service)
        try:
            yield service
        finally:
            tg.cancel_scope.cancel()


async def _run_service(service: Service, *, task_status: Any) -> None:
    await service.run(handle_signals=False, task_status=task_status)


@contextlib.asynccontextmanager
async def running_provisioner(url: str, **config: Any) -> AsyncIterator[SimulatedProvisioner]:
    defaults: dict[str, Any] = {"build_time": 0.05, "agent_ready_delay": 0.02, "poll_interval": 0.2}
    provisioner = SimulatedProvisioner(url, ProvisionerConfig(**{**defaults, **config}))
    async with anyio.create_task_group() as tg:
        tg.start_soon(provisioner.run)
        try:
            yield provisioner
        finally:
            tg.cancel_scope.cancel()


def metric(service: Service, name: str, **labels: str) -> float:
    """A sample of the service's /metrics, read from its rendered exposition (the text a
    scrape gets), summed over the samples that match `labels`."""
    text = service.metrics.render().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def reconciles(service: Service, trigger: str) -> float:
    """prebuildd_reconciles_total{trigger=...}."""
    return metric(service, "prebuildd_reconciles_total", trigger=trigger)


async def fetch_value(url: str, statement: str, params: dict[str, Any] | None = None) -> Any:
    """First column of the first row (None when there is no row), on a fresh connection."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(statement, params)  # type: ignore[arg-type]
        row = await cur.fetchone()
        return None if row is None else row[0]


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, interval: float = 0.05
) -> float:
    """Poll `check` until it holds; return how long that took. Fails with a clear message."""
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition still false after {timeout:.1f}s")
        await anyio.sleep(interval)


# SQL used by the assertions: counts over real rows, written from Coder's point of view.

LIVE_PREBUILDS = """
SELECT count(*) FROM workspaces w
JOIN LATERAL (
    SELECT b.transition, j.job_status, b.template_version_preset_id
    FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
    WHERE b.workspace_id = w.id ORDER BY b.build_number DESC LIMIT 1
) lb ON true
WHERE w.owner_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0' AND NOT w.deleted
  AND lb.template_version_preset_id = %(preset)s AND lb.transition = 'start'
  AND lb.job_status IN ('pending', 'running', 'succeeded')
"""

PENDING_CREATES = """
SELECT count(*) FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
WHERE b.template_version_preset_id = %(preset)s AND b.build_number = 1
  AND b.transition = 'start' AND j.job_status = 'pending'
"""

CANCELED_CREATES = """
SELECT count(*) FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
JOIN workspaces w ON w.id = b.workspace_id
WHERE b.template_version_preset_id = %(preset)s AND b.build_number = 1
  AND j.job_status = 'canceled' AND w.deleted
"""

ELIGIBLE = """
SELECT count(*) FROM workspace_prebuilds p
JOIN workspace_latest_builds b ON b.workspace_id = p.id
WHERE p.current_preset_id = %(preset)s AND p.ready
  AND b.transition = 'start' AND b.job_status = 'succeeded'
"""

DELETE_BUILDS = """
SELECT count(*) FROM workspace_builds b
WHERE b.template_version_preset_id = %(preset)s AND b.transition = 'delete'
"""
