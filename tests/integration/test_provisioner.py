"""The simulated provisioner on a real PostgreSQL: acquisition, outcomes, heartbeat, shutdown."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString
from uuid import UUID

import anyio
import psycopg
import pytest
from psycopg.rows import dict_row

import factories as f
from _notify import Listening
from prebuildd.claim import claim
from prebuildd.events import CHANNEL
from prebuildd.model import PREBUILDS_USER_ID
from prebuildd.provisioner import (
    FAILURE_ERROR,
    SHUTDOWN_ERROR,
    ProvisionerConfig,
    SimulatedProvisioner,
)
from prebuildd.queries import query

Conn = psycopg.Connection[Any]
AConn = psycopg.AsyncConnection[Any]
FAST = ProvisionerConfig(build_time=0, agent_ready_delay=0, concurrency=2, poll_interval=0.2)


@pytest.fixture
def preset(conn: Conn) -> UUID:
    """A preset of an active template's version (committed)."""
    tpl = f.make_template(conn, f.make_org(conn))
    preset_id = f.make_preset(conn, tpl.version_id)
    conn.commit()
    return preset_id


def queue_build(
    conn: Conn,
    preset: UUID,
    *,
    transition: str = "start",
    initiator: UUID = PREBUILDS_USER_ID,
    created_at: datetime | None = None,
    job_status: str = "pending",
    worker_id: UUID | None = None,
) -> f.BuildRef:
    """A workspace whose latest build is queued: a first `start`, or a later stop/delete."""
    if transition == "start":
        build = f.make_prebuild(
            conn,
            preset,
            job_status=job_status,
            owner=initiator,
            created_at=created_at,
            worker_id=worker_id,
        )
    else:
        first = f.make_prebuild(conn, preset, owner=initiator)
        build = f.add_build(
            conn,
            first.workspace_id,
            transition=transition,
            job_status=job_status,
            initiator=initiator,
            created_at=created_at,
            worker_id=worker_id,
        )
    conn.commit()
    return build


def job_row(conn: Conn, job_id: UUID) -> dict[str, Any]:
    return one(conn, "SELECT * FROM provisioner_jobs WHERE id = %s", job_id)


def one(conn: Conn, sql: LiteralString, *args: object) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, args)
        row = cur.fetchone()
    conn.commit()
    assert row is not None
    return row


def all_rows(conn: Conn, sql: LiteralString, *args: object) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, args)
        found = cur.fetchall()
    conn.commit()
    return found


async def ajob(aconn: AConn, job_id: UUID) -> dict[str, Any]:
    async with aconn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM provisioner_jobs WHERE id = %s", (job_id,))
        row = await cur.fetchone()
    assert row is not None
    return row


async def wait_for_status(aconn: AConn, job_id: UUID, *statuses: str) -> dict[str, Any]:
    with anyio.fail_after(60):  # generous: only reached when something is wrong
        while (row := await ajob(aconn, job_id))["job_status"] not in statuses:
            await anyio.sleep(0.05)
    return row


# ---------------------------------------------------------------------------------------------
# Outcomes
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_start_build_gets_a_resource_and_a_ready_top_level_agent(
    db_url: str, conn: Conn, preset: UUID
) -> None:
    build = queue_build(conn, preset)
    prov = SimulatedProvisioner(db_url, FAST)

    assert await prov.run_once() == 1

    job = job_row(conn, build.job_id)
    assert job["job_status"] == "succeeded"
    assert job["worker_id"] == prov.worker_id
    assert job["error"] is None
    assert job["started_at"] is not None and job["completed_at"] >= job["started_at"]
    resources = all_rows(conn, "SELECT * FROM workspace_resources WHERE job_id = %s", build.job_id)
    assert [(r["type"], r["name"], r["transition"]) for r in resources] == [
        ("simulated_vm", "dev", "start")
    ]
    agents = all_rows(
        conn, "SELECT * FROM workspace_agents WHERE resource_id = %s", resources[0]["id"]
    )
    assert len(agents) == 1
    agent = agents[0]
    assert agent["lifecycle_state"] == "ready"
    assert agent["parent_id"] is None and agent["deleted"] is False
    assert agent["started_at"] is not None and agent["ready_at"] is not None
    assert agent["first_connected_at"] is not None
    assert agent["auth_token"] is not None
    assert (agent["architecture"], agent["operating_system"]) == ("amd64", "linux")
    state = one(
        conn, "SELECT provisioner_state FROM workspace_builds WHERE id = %s", build.build_id
    )
    assert state["provisioner_state"]


@pytest.mark.anyio
async def test_the_agent_reports_starting_before_ready(
    db_url: str, conn: Conn, preset: UUID
) -> None:
    # A readiness delay no test run reaches: the agent is seen `starting` for certain; then
    # the provisioner stops, and the agent turns ready anyway (a real agent outlives its
    # provisioner).
    build = queue_build(conn, preset)
    prov = SimulatedProvisioner(
        db_url, ProvisionerConfig(build_time=0, agent_ready_delay=3600, poll_interval=0.2)
    )
    lifecycle = (
        "SELECT a.lifecycle_state::text FROM workspace_agents a"
        " JOIN workspace_resources r ON r.id = a.resource_id WHERE r.job_id = %s"
    )

    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as aconn:
        async with anyio.create_task_group() as tg:
            tg.start_soon(prov.run_once)
            await wait_for_status(aconn, build.job_id, "succeeded")
            cur = await aconn.execute(lifecycle, (build.job_id,))
            assert await cur.fetchall() == [("starting",)]
            tg.cancel_scope.cancel()
        cur = await aconn.execute(lifecycle, (build.job_id,))
        assert await cur.fetchall() == [("ready",)]


@pytest.mark.anyio
async def test_failure_rate_one_fails_every_job(db_url: str, conn: Conn, preset: UUID) -> None:
    builds = [queue_build(conn, preset) for _ in range(3)]
    config = ProvisionerConfig(build_time=0, failure_rate=1.0, agent_ready_delay=0, seed=7)

    assert await SimulatedProvisioner(db_url, config).run_once() == 3

    for build in builds:
        job = job_row(conn, build.job_id)
        assert job["job_status"] == "failed"
        assert job["error"] == FAILURE_ERROR
        assert job["completed_at"] is not None
    assert all_rows(conn, "SELECT id FROM workspace_resources") == []


@pytest.mark.anyio
async def test_a_delete_build_marks_the_workspace_deleted_and_a_stop_build_does_not(
    db_url: str, conn: Conn, preset: UUID
) -> None:
    deleting = queue_build(conn, preset, transition="delete")
    stopping = queue_build(conn, preset, transition="stop")

    assert await SimulatedProvisioner(db_url, FAST).run_once() == 2

    assert job_row(conn, deleting.job_id)["job_status"] == "succeeded"
    assert job_row(conn, stopping.job_id)["job_status"] == "succeeded"
    deleted = dict(
        (r["id"], r["deleted"]) for r in all_rows(conn, "SELECT id, deleted FROM workspaces")
    )
    assert deleted == {deleting.workspace_id: True, stopping.workspace_id: False}
    new_resources = all_rows(
        conn,
        "SELECT id FROM workspace_resources WHERE job_id = ANY(%s)",
        [deleting.job_id, stopping.job_id],
    )
    assert new_resources == []


@pytest.mark.anyio
async def test_a_prebuild_becomes_claimable_once_provisioned(
    db_url: str, conn: Conn, preset: UUID
) -> None:
    build = queue_build(conn, preset)
    user_id = f.make_user(conn)
    conn.commit()
    assert claim(conn, preset_id=preset, user_id=user_id, name="early") is None

    await SimulatedProvisioner(db_url, FAST).run_once()

    claimed = claim(conn, preset_id=preset, user_id=user_id, name="mine")
    assert claimed is not None and claimed.workspace_id == build.workspace_id


# ---------------------------------------------------------------------------------------------
# Acquisition
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_user_jobs_go_before_prebuild_jobs_then_oldest_first(
    db_url: str, conn: Conn, preset: UUID
) -> None:
    base = datetime.now(UTC) - timedelta(hours=1)
    user_id = f.make_user(conn)
    prebuild_jobs = [
        queue_build(conn, preset, created_at=base + timedelta(minutes=i)).job_id for i in range(3)
    ]
    user_jobs = [
        queue_build(
            conn, preset, initiator=user_id, created_at=base + timedelta(minutes=10 + i)
        ).job_id
        for i in range(2)
    ]
    config = ProvisionerConfig(build_time=0, agent_ready_delay=0, concurrency=1)

    assert await SimulatedProvisioner(db_url, config).run_once() == 5

    started = all_rows(
        conn,
        "SELECT id FROM provisioner_jobs WHERE type = 'workspace_build' ORDER BY started_at",
    )
    assert [r["id"] for r in started] == user_jobs + prebuild_jobs


@pytest.mark.anyio
async def test_jobs_not_to_be_started_are_left_alone(db_url: str, conn: Conn, preset: UUID) -> None:
    unpicked = queue_build(conn, preset)
    conn.execute(
        "UPDATE provisioner_jobs SET canceled_at = now() WHERE id = %s", (unpicked.job_id,)
    )
    conn.commit()  # cancel requested before any daemon picked it up
    canceling = queue_build(conn, preset, job_status="canceling")  # another daemon, canceling
    canceled = queue_build(conn, preset, job_status="canceled")
    running = queue_build(conn, preset, job_status="running")  # another daemon has it
    jobs = (unpicked, canceling, canceled, running)
    before = {b.job_id: job_row(conn, b.job_id) for b in jobs}

    assert await SimulatedProvisioner(db_url, FAST).run_once() == 0

    assert {job_id: job_row(conn, job_id) for job_id in before} == before


@pytest.mark.anyio
async def test_a_locked_job_is_skipped_not_waited_for(
    db_url: str, conn: Conn, preset: UUID
) -> None:
    locked = queue_build(conn, preset)
    free = queue_build(conn, preset)
    with psycopg.connect(db_url) as holder:
        holder.execute("SELECT 1 FROM provisioner_jobs WHERE id = %s FOR UPDATE", (locked.job_id,))
        with anyio.fail_after(10):
            assert await SimulatedProvisioner(db_url, FAST).run_once() == 1
        holder.rollback()

    assert job_row(conn, free.job_id)["job_status"] == "succeeded"
    assert job_row(conn, locked.job_id)["job_status"] == "pending"


@pytest.mark.anyio
async def test_two_provisioners_never_acquire_the_same_job(
    db_url: str, conn: Conn, preset: UUID
) -> None:
    builds = [queue_build(conn, preset) for _ in range(30)]
    config = ProvisionerConfig(build_time=0.05, agent_ready_delay=0, concurrency=4)
    first, second = SimulatedProvisioner(db_url, config), SimulatedProvisioner(db_url, config)
    counts: dict[UUID, int] = {}

    async def run(prov: SimulatedProvisioner) -> None:
        counts[prov.worker_id] = await prov.run_once()

    # Both must win jobs, whichever starts first on a loaded machine: a lock on the builds'
    # rows stops every completion (it writes the build's state), so each worker of each
    # provisioner holds one acquired job until both have acquired theirs.
    async with (
        await psycopg.AsyncConnection.connect(db_url, autocommit=True) as watcher,
        await psycopg.AsyncConnection.connect(db_url) as gate,
        anyio.create_task_group() as tg,
    ):
        await gate.execute(
            "SELECT 1 FROM workspace_builds WHERE job_id = ANY(%s) FOR UPDATE",
            ([b.job_id for b in builds],),
        )
        tg.start_soon(run, first)
        tg.start_soon(run, second)
        with anyio.fail_after(60):
            while await _running_by_worker(watcher) != {
                first.worker_id: config.concurrency,
                second.worker_id: config.concurrency,
            }:
                await anyio.sleep(0.02)
        await gate.rollback()

    assert sum(counts.values()) == len(builds)
    assert all(n > 0 for n in counts.values()), counts
    jobs = [job_row(conn, b.job_id) for b in builds]
    assert {j["job_status"] for j in jobs} == {"succeeded"}
    by_worker = {w: sum(1 for j in jobs if j["worker_id"] == w) for w in counts}
    assert by_worker == counts
    resources = all_rows(conn, "SELECT job_id, count(*) AS n FROM workspace_resources GROUP BY 1")
    assert {r["n"] for r in resources} == {1} and len(resources) == len(builds)


async def _running_by_worker(aconn: AConn) -> dict[UUID, int]:
    cur = await aconn.execute(
        "SELECT worker_id, count(*) FROM provisioner_jobs"
        " WHERE type = 'workspace_build' AND started_at IS NOT NULL AND completed_at IS NULL"
        " GROUP BY worker_id"
    )
    return {row[0]: int(row[1]) for row in await cur.fetchall()}


# ---------------------------------------------------------------------------------------------
# While a job runs: heartbeat, cancel, shutdown
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_heartbeat_bumps_only_updated_at(
    db_url: str, conn: Conn, preset: UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A beat every 0.2 s over a 3 s build: about 14 chances to see two, on a loaded machine.
    monkeypatch.setattr("prebuildd.provisioner.HEARTBEAT_INTERVAL", 0.2)
    build = queue_build(conn, preset)
    prov = SimulatedProvisioner(db_url, ProvisionerConfig(build_time=3.0, agent_ready_delay=0))
    seen: list[dict[str, Any]] = []

    aconnect = psycopg.AsyncConnection.connect(db_url, autocommit=True)
    async with await aconnect as aconn, anyio.create_task_group() as tg:
        tg.start_soon(prov.run_once)
        first = await wait_for_status(aconn, build.job_id, "running")
        while (row := await ajob(aconn, build.job_id))["job_status"] == "running":
            seen.append(row)
            await anyio.sleep(0.05)

    def without_updated_at(row: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in row.items() if k != "updated_at"}

    assert all(without_updated_at(r) == without_updated_at(first) for r in seen)
    beats = sorted({r["updated_at"] for r in seen} - {first["updated_at"]})
    assert len(beats) >= 2, "expected a heartbeat every HEARTBEAT_INTERVAL"
    assert job_row(conn, build.job_id)["job_status"] == "succeeded"


def test_a_heartbeat_and_a_success_wake_no_trigger_but_a_failure_does(
    db_url: str, conn: Conn, preset: UUID
) -> None:
    # A create's success on the active version is not announced (the starting prebuild
    # already counted toward desired: sql/functions/notify_event.sql); its failure is.
    worker_id = uuid.uuid4()
    build = queue_build(conn, preset, job_status="running", worker_id=worker_id)
    failing = queue_build(conn, preset, job_status="running", worker_id=worker_id)
    params = {"now": datetime.now(UTC), "job_id": build.job_id, "worker_id": worker_id}
    listener = Listening.open(db_url, CHANNEL)
    try:
        beat = conn.execute(query("provisioner_heartbeat"), params).fetchone()
        conn.commit()
        assert beat == (False,)
        assert listener.received() == []  # the sentinel came first: nothing was sent

        done = conn.execute(query("provisioner_complete_job"), {**params, "error": None})
        assert done.fetchone() == ("succeeded",)
        conn.commit()
        assert listener.received() == []

        failed = conn.execute(
            query("provisioner_complete_job"),
            {**params, "job_id": failing.job_id, "error": "terraform apply failed"},
        )
        assert failed.fetchone() == ("failed",)
        conn.commit()
        assert len(listener.received()) == 1
    finally:
        listener.close()


@pytest.mark.anyio
async def test_a_cancel_requested_while_building_ends_the_job_canceled(
    db_url: str, conn: Conn, preset: UUID
) -> None:
    build = queue_build(conn, preset)
    prov = SimulatedProvisioner(db_url, ProvisionerConfig(build_time=20, agent_ready_delay=0))

    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as aconn:
        with anyio.fail_after(10):  # far less than build_time: the cancel is noticed early
            async with anyio.create_task_group() as tg:
                tg.start_soon(prov.run_once)
                await wait_for_status(aconn, build.job_id, "running")
                await aconn.execute(
                    "UPDATE provisioner_jobs SET canceled_at = now() WHERE id = %s",
                    (build.job_id,),
                )

    job = job_row(conn, build.job_id)
    assert job["job_status"] == "canceled"
    assert job["error"] is None and job["completed_at"] is not None
    assert all_rows(conn, "SELECT id FROM workspace_resources") == []


@pytest.mark.parametrize("error", [None, FAILURE_ERROR])
def test_a_cancel_landing_just_before_completion_still_wins(
    conn: Conn, preset: UUID, error: str | None
) -> None:
    # The daemon saw no cancel at its last heartbeat, then one lands before it completes.
    worker_id = uuid.uuid4()
    build = queue_build(conn, preset, job_status="canceling", worker_id=worker_id)
    params = {"now": datetime.now(UTC), "job_id": build.job_id, "worker_id": worker_id}

    status = conn.execute(query("provisioner_complete_job"), {**params, "error": error}).fetchone()

    assert status == ("canceled",)
    assert job_row(conn, build.job_id)["error"] is None


@pytest.mark.anyio
async def test_run_wakes_on_posted_jobs_and_fails_in_flight_jobs_on_shutdown(
    db_url: str, conn: Conn, preset: UUID
) -> None:
    prebuild = f.make_prebuild(conn, preset)
    user_id = f.make_user(conn)
    conn.commit()
    # Polling far slower than the test: only the LISTEN wake-up can make it in time.
    prov = SimulatedProvisioner(
        db_url, ProvisionerConfig(build_time=30, agent_ready_delay=0, poll_interval=60)
    )

    aconnect = psycopg.AsyncConnection.connect(db_url, autocommit=True)
    async with await aconnect as aconn, anyio.create_task_group() as tg:
        tg.start_soon(prov.run)
        await anyio.sleep(0.5)  # let it LISTEN and find nothing
        claimed = claim(conn, preset_id=preset, user_id=user_id, name="mine")
        assert claimed is not None and claimed.workspace_id == prebuild.workspace_id
        conn.commit()  # delivers provisioner_job_posted
        running = await wait_for_status(aconn, claimed.job_id, "running")
        assert running["worker_id"] == prov.worker_id
        tg.cancel_scope.cancel()

    assert claimed is not None
    job = job_row(conn, claimed.job_id)
    assert job["job_status"] == "failed"
    assert job["error"] == SHUTDOWN_ERROR
