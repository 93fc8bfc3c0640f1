"""A simulated provisioner: plays Coder's provisioner daemons for dev, demo and tests.

It acquires jobs the way Coder's daemons do (one at a time per worker, `FOR UPDATE SKIP
LOCKED`, people's jobs before prebuild jobs, oldest first), "builds" for `build_time` seconds
while heartbeating `updated_at` about once a second, then completes the job in one
transaction, writing what a real provisioner would:

- canceled meanwhile → the job ends canceled, nothing else is written;
- with probability `failure_rate` → the job fails with error 'simulated failure';
- otherwise it succeeds: a `start` build gets a `simulated_vm` resource and a top-level agent
  in `starting` that turns `ready` `agent_ready_delay` seconds later (in its own transaction,
  as a real agent reports it); a `delete` build marks the workspace deleted; a `stop` build
  and non-build jobs (template imports, dry runs) need nothing more.

Workers wake on `LISTEN provisioner_job_posted` (what claims, creates and deletes post) and
poll every `poll_interval` as a fallback. On cancellation a job still building is failed with
'provisioner shut down', as Coder does when a daemon goes away; agents already provisioned turn
ready anyway, since a real agent outlives its provisioner.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import anyio
import psycopg
from anyio.abc import TaskGroup
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from prebuildd.queries import query

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 1.0
FAILURE_ERROR = "simulated failure"
SHUTDOWN_ERROR = "provisioner shut down"
# Bound on the shielded clean-up at shutdown, so a dead database cannot hang the exit.
SHUTDOWN_GRACE = 5.0
SUCCEEDED = "succeeded"
# Opaque bytes stored as the build's provisioner state (Terraform state in Coder).
SIMULATED_STATE = b"simulated-provisioner-state"

Pool = AsyncConnectionPool[psycopg.AsyncConnection[Any]]


@dataclass(frozen=True, slots=True)
class ProvisionerConfig:
    """Behaviour of the simulated provisioner (seconds, probabilities, counts)."""

    build_time: float = 1.0
    failure_rate: float = 0.0
    agent_ready_delay: float = 0.5
    concurrency: int = 4
    poll_interval: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.build_time < 0 or self.agent_ready_delay < 0:
            raise ValueError("build_time and agent_ready_delay must not be negative")
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ValueError("failure_rate must be between 0 and 1")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.poll_interval <= 0:
            raise ValueError("poll_interval must be positive")


@dataclass(frozen=True, slots=True)
class AcquiredJob:
    """A job this provisioner started, with the build it executes (None for non-builds)."""

    job_id: UUID
    job_type: str
    build_id: UUID | None
    workspace_id: UUID | None
    transition: str | None


def _now() -> datetime:
    return datetime.now(UTC)


class SimulatedProvisioner:
    """Acquires and completes provisioner jobs like Coder's daemons, without running anything."""

    def __init__(self, conninfo: str, config: ProvisionerConfig | None = None) -> None:
        self._conninfo = conninfo
        self.config = config or ProvisionerConfig()
        # The daemon's identity in provisioner_jobs.worker_id, fixed for this instance.
        self.worker_id = uuid.uuid4()
        self._rng = random.Random(self.config.seed)
        self._wake: anyio.Event | None = None

    # -- entry points --------------------------------------------------------------------------

    async def run(self) -> None:
        """Process jobs until cancelled."""
        self._wake = anyio.Event()
        async with self._pool() as pool, anyio.create_task_group() as tg:
            tg.start_soon(self._listen)
            for _ in range(self.config.concurrency):
                tg.start_soon(self._worker, pool, tg)

    async def run_once(self) -> int:
        """Acquire and complete every job available now; return how many this instance took.

        Waits `build_time` (nothing when 0) per job and for its agents to turn ready; errors
        propagate, which is what tests want.
        """
        processed = 0

        async def drain(pool: Pool, tg: TaskGroup) -> None:
            nonlocal processed
            while (job := await self._acquire(pool)) is not None:
                processed += 1
                await self._process(pool, job, tg)

        async with self._pool() as pool, anyio.create_task_group() as tg:
            for _ in range(self.config.concurrency):
                tg.start_soon(drain, pool, tg)
        return processed

    # -- plumbing ------------------------------------------------------------------------------

    @asynccontextmanager
    async def _pool(self) -> AsyncIterator[Pool]:
        # Workers hold a connection only per statement or completion, never while "building".
        pool: Pool = AsyncConnectionPool(
            self._conninfo, min_size=1, max_size=self.config.concurrency + 2, open=False
        )
        await pool.open(wait=True)
        try:
            yield pool
        finally:
            with anyio.CancelScope(shield=True):
                await pool.close()

    def _wake_workers(self) -> None:
        if self._wake is not None:
            event, self._wake = self._wake, anyio.Event()
            event.set()

    async def _listen(self) -> None:
        """Wake the workers on every posting; reconnect after losses (polling covers gaps)."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as conn:
                    await conn.execute(query("provisioner_listen"))
                    # Anything posted while we were not listening is picked up now.
                    self._wake_workers()
                    async for _ in conn.notifies():
                        self._wake_workers()
            except psycopg.OperationalError as exc:
                log.warning("simulated provisioner lost its LISTEN connection: %s", exc)
            await anyio.sleep(self.config.poll_interval)

    async def _worker(self, pool: Pool, tg: TaskGroup) -> None:
        while True:
            # Taken before looking, so a posting that lands meanwhile is not missed.
            wake = self._wake
            try:
                job = await self._acquire(pool)
                if job is not None:
                    await self._process(pool, job, tg)
                    continue
            except Exception:
                log.exception("simulated provisioner worker failed; retrying after a poll")
            with anyio.move_on_after(self.config.poll_interval):
                if wake is not None:
                    await wake.wait()

    # -- one job -------------------------------------------------------------------------------

    async def _acquire(self, pool: Pool) -> AcquiredJob | None:
        params = {"now": _now(), "worker_id": self.worker_id}
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query("provisioner_acquire_job"), params)
            row = await cur.fetchone()
        if row is None:
            return None
        return AcquiredJob(
            job_id=row["job_id"],
            job_type=row["job_type"],
            build_id=row["build_id"],
            workspace_id=row["workspace_id"],
            transition=row["transition"],
        )

    async def _process(self, pool: Pool, job: AcquiredJob, tg: TaskGroup) -> None:
        try:
            cancel_seen = await self._build(pool, job)
            error = None if cancel_seen or not self._fails() else FAILURE_ERROR
            status = await self._complete(pool, job, error)
        except anyio.get_cancelled_exc_class():
            await self._abandon(pool, job, SHUTDOWN_ERROR)
            raise
        except Exception as exc:
            await self._abandon(pool, job, f"simulated provisioner error: {exc}")
            raise
        log.info("simulated provisioner finished job %s: %s", job.job_id, status)
        if status == SUCCEEDED and job.transition == "start":
            tg.start_soon(self._agents_ready, pool, job)

    def _fails(self) -> bool:
        return self._rng.random() < self.config.failure_rate

    async def _build(self, pool: Pool, job: AcquiredJob) -> bool:
        """Spend build_time, heartbeating; True as soon as a cancel is seen."""
        deadline = anyio.current_time() + self.config.build_time
        while (left := deadline - anyio.current_time()) > 0:
            await anyio.sleep(min(HEARTBEAT_INTERVAL, left))
            if anyio.current_time() < deadline and await self._heartbeat(pool, job):
                return True
        return False

    async def _heartbeat(self, pool: Pool, job: AcquiredJob) -> bool:
        """Bump updated_at; True when the job was canceled or is no longer ours."""
        params = {"now": _now(), "job_id": job.job_id, "worker_id": self.worker_id}
        async with pool.connection() as conn:
            cur = await conn.execute(query("provisioner_heartbeat"), params)
            row = await cur.fetchone()
        return row is None or bool(row[0])

    async def _complete(self, pool: Pool, job: AcquiredJob, error: str | None) -> str | None:
        """Finish the job and write its results, in one transaction; returns its final status."""
        now = _now()
        params = {"now": now, "job_id": job.job_id, "worker_id": self.worker_id, "error": error}
        async with pool.connection() as conn, conn.transaction():
            cur = await conn.execute(query("provisioner_complete_job"), params)
            row = await cur.fetchone()
            status = None if row is None else str(row[0])
            if status == SUCCEEDED and job.build_id is not None:
                await self._write_results(conn, job, now)
        return status

    async def _write_results(
        self, conn: psycopg.AsyncConnection[Any], job: AcquiredJob, now: datetime
    ) -> None:
        base: dict[str, Any] = {"now": now, "job_id": job.job_id}
        await conn.execute(
            query("provisioner_record_build_state"), {**base, "state": SIMULATED_STATE}
        )
        if job.transition == "start":
            resource_id = uuid.uuid4()
            await conn.execute(
                query("provisioner_insert_resource"), {**base, "resource_id": resource_id}
            )
            agent = {
                "now": now,
                "agent_id": uuid.uuid4(),
                "resource_id": resource_id,
                "auth_token": uuid.uuid4(),
            }
            await conn.execute(query("provisioner_insert_agent"), agent)
        elif job.transition == "delete":
            await conn.execute(query("provisioner_mark_workspace_deleted"), base)

    async def _agents_ready(self, pool: Pool, job: AcquiredJob) -> None:
        try:
            await anyio.sleep(self.config.agent_ready_delay)
        finally:
            # A real agent outlives its provisioner: on shutdown it still becomes ready.
            with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_GRACE):
                async with pool.connection() as conn:
                    await conn.execute(
                        query("provisioner_agents_ready"), {"now": _now(), "job_id": job.job_id}
                    )

    async def _abandon(self, pool: Pool, job: AcquiredJob, error: str) -> None:
        """Fail a job we can no longer finish (no-op when it already completed)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_GRACE):
            try:
                await self._complete(pool, job, error)
            except Exception:
                log.exception("simulated provisioner could not fail job %s", job.job_id)
