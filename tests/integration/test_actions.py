"""The store's writes against a real PostgreSQL: the rows each action writes, and only those."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, LiteralString
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg.rows import dict_row

from factories import (
    UNTAGGED,
    BuildRef,
    TemplateRef,
    add_build,
    claim,
    make_org,
    make_prebuild,
    make_preset,
    make_template,
    make_user,
    make_version,
)
from prebuildd import store
from prebuildd.model import (
    PREBUILDS_USER_ID,
    Action,
    ActionKind,
    CancelPending,
    Create,
    Delete,
    DeleteReason,
    Plan,
    PrebuildStatus,
    Preset,
    PresetState,
    SetStatus,
)

pytestmark = pytest.mark.anyio

Conn = psycopg.Connection[Any]
AConn = psycopg.AsyncConnection[Any]
NOW = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)
PARAMS = {"region": "eu", "size": "large"}
TRACE = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


@dataclass(frozen=True)
class Inbox:
    conn: Conn
    url: str


@pytest.fixture
def listener(db_url: str) -> Iterator[Inbox]:
    """An autocommit connection listening where Coder's provisioners listen."""
    with psycopg.connect(db_url, autocommit=True) as lconn:
        lconn.execute("LISTEN provisioner_job_posted")
        yield Inbox(lconn, db_url)


SENTINEL = "prebuildd-test-sentinel"


def postings(listener: Inbox, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every wake-up committed before this call, and only those.

    A sentinel is posted now, from another session: PostgreSQL delivers notifications in
    commit order, so everything before it has arrived when it does. An empty list therefore
    means "nothing was posted", not "nothing arrived in time".
    """
    with psycopg.connect(listener.url, autocommit=True) as other:
        other.execute("SELECT pg_notify('provisioner_job_posted', %s)", (SENTINEL,))
    got: list[dict[str, Any]] = []
    for n in listener.conn.notifies(timeout=timeout):
        if n.payload == SENTINEL:
            return got
        got.append(json.loads(n.payload))
    raise AssertionError(f"the sentinel notification did not arrive within {timeout:.0f}s")


def rows(conn: Conn, sql: LiteralString, *args: object) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def scalar(conn: Conn, sql: LiteralString, *args: object) -> Any:
    row = conn.execute(sql, args).fetchone()
    assert row is not None
    return row[0]


def plan_for(preset_id: UUID) -> Plan:
    """A plan shell: `execute` only needs the preset's id from it."""
    preset = Preset(
        id=preset_id, name="p", template_id=UUID(int=0), template_name="t",
        organization_id=UUID(int=0), organization_name="o", template_version_id=UUID(int=0),
        template_version_name="v", using_active_version=True, template_deleted=False,
        template_deprecated=False, desired_instances=0,
    )
    state = PresetState(0, 0, 0, 0, 0, 0, 0, 0, 0, None, False)
    return Plan(preset, state, (), None)


async def run(aconn: AConn, *actions: Action, commit: bool = True) -> list[store.ActionResult]:
    """Execute actions in one transaction, the way the reconciler does (savepoint per action)."""
    results: list[store.ActionResult] = []
    async with aconn.transaction() as tx:
        for action in actions:
            async with aconn.transaction():
                results.append(
                    await store.execute(aconn, plan_for(action.preset_id), action, now=NOW,
                                        trace_metadata=TRACE)
                )
        if not commit:
            raise psycopg.Rollback(tx)
    return results


class Pool:
    """An active template with one preset that wants prebuilds."""

    def __init__(self, conn: Conn, *, import_tags: dict[str, str] | None = None,
                 org: UUID | None = None) -> None:
        self.org = org or make_org(conn)
        self.tpl: TemplateRef = make_template(conn, self.org, import_tags=import_tags or UNTAGGED)
        self.preset = make_preset(conn, self.tpl.version_id, desired=2, parameters=PARAMS)

    def create(self, count: int) -> Create:
        return Create(self.preset, self.tpl.version_id, count)


def untagged_posting(org: UUID) -> dict[str, Any]:
    return {"organization_id": str(org), "type": "terraform", "tags": dict(UNTAGGED)}


# ---------------------------------------------------------------------------------------------
# Create
# ---------------------------------------------------------------------------------------------


async def test_create_writes_what_coder_writes(aconn: AConn, conn: Conn, listener: Inbox) -> None:
    pool = Pool(conn, import_tags={"scope": "organization", "owner": "", "region": "eu"})
    conn.commit()
    (result,) = await run(aconn, pool.create(3))
    assert result.kind is ActionKind.CREATE and len(result.created) == 3
    ids = list(result.created)
    tags = {"scope": "organization", "owner": "", "region": "eu"}

    workspaces = rows(conn, "SELECT * FROM workspaces WHERE owner_id = %s ORDER BY id",
                      PREBUILDS_USER_ID)
    assert sorted(w["id"] for w in workspaces) == sorted(ids)
    for w in workspaces:
        assert w["name"].startswith("prebuild-") and len(w["name"]) == 25
        assert (w["organization_id"], w["template_id"]) == (pool.org, pool.tpl.id)
        assert w["created_at"] == w["updated_at"] == w["last_used_at"] == NOW
        assert w["automatic_updates"] == "never"
        assert w["deleted"] is False and w["favorite"] is False
        for column in ("autostart_schedule", "ttl", "next_start_at", "dormant_at", "deleting_at"):
            assert w[column] is None, column

    builds = rows(conn, "SELECT * FROM workspace_builds WHERE workspace_id = ANY(%s)", ids)
    assert len(builds) == 3
    file_id = scalar(conn, "SELECT file_id FROM provisioner_jobs WHERE id = %s",
                     pool.tpl.import_job_id)
    for b in builds:
        assert (b["build_number"], b["transition"], b["reason"]) == (1, "start", "initiator")
        assert b["initiator_id"] == PREBUILDS_USER_ID
        assert b["template_version_id"] == pool.tpl.version_id
        assert b["template_version_preset_id"] == pool.preset
        assert b["deadline"] == b["max_deadline"] == ZERO_TIME
        assert b["provisioner_state"] is None and b["daily_cost"] == 0
        assert b["created_at"] == b["updated_at"] == NOW
        (job,) = rows(conn, "SELECT * FROM provisioner_jobs WHERE id = %s", b["job_id"])
        assert job["type"] == "workspace_build" and job["job_status"] == "pending"
        assert (job["organization_id"], job["initiator_id"]) == (pool.org, PREBUILDS_USER_ID)
        assert (job["provisioner"], job["storage_method"]) == ("terraform", "file")
        assert job["file_id"] == file_id
        assert job["tags"] == tags
        assert job["input"] == {
            "workspace_build_id": str(b["id"]), "dry_run": False, "prebuilt_workspace_stage": 1,
        }
        assert job["trace_metadata"] == TRACE
        assert job["created_at"] == job["updated_at"] == NOW
        for column in ("started_at", "completed_at", "canceled_at", "worker_id", "error"):
            assert job[column] is None, column
        params = rows(conn, "SELECT name, value FROM workspace_build_parameters"
                      " WHERE workspace_build_id = %s", b["id"])
        assert {p["name"]: p["value"] for p in params} == PARAMS
    # Exactly those rows: one import job plus three build jobs.
    assert scalar(conn, "SELECT count(*) FROM provisioner_jobs") == 4
    assert scalar(conn, "SELECT count(*) FROM workspace_build_parameters") == 6
    assert postings(listener) == [
        {"organization_id": str(pool.org), "type": "terraform", "tags": tags}
    ]


async def test_rolled_back_create_posts_nothing(aconn: AConn, conn: Conn, listener: Inbox) -> None:
    pool = Pool(conn)
    conn.commit()
    (result,) = await run(aconn, pool.create(2), commit=False)
    assert len(result.created) == 2
    assert postings(listener) == []
    assert scalar(conn, "SELECT count(*) FROM workspaces") == 0


async def test_one_posting_per_distinct_tag_set(aconn: AConn, conn: Conn, listener: Inbox) -> None:
    org = make_org(conn)
    first, second = Pool(conn, org=org), Pool(conn, org=org)
    tagged = Pool(conn, org=org, import_tags={"scope": "organization", "gpu": "yes"})
    running = make_prebuild(conn, first.preset)
    conn.commit()
    await run(
        aconn, first.create(2), second.create(1), tagged.create(1),
        Delete(first.preset, (running.workspace_id,), DeleteReason.SURPLUS),
    )
    got = postings(listener)
    assert len(got) == 2
    assert untagged_posting(org) in got
    assert {"organization_id": str(org), "type": "terraform",
            "tags": {"scope": "organization", "owner": "", "gpu": "yes"}} in got


@pytest.mark.parametrize(
    ("import_tags", "job_tags"),
    [
        ({"scope": "user", "owner": "someone", "empty": ""},
         {"scope": "user", "owner": str(PREBUILDS_USER_ID)}),
        ({"scope": "weird", "owner": "x"}, {"scope": "organization", "owner": ""}),
        ({}, {"scope": "organization", "owner": ""}),
        ({"owner": "x", "os": "linux"}, {"scope": "organization", "owner": "", "os": "linux"}),
    ],
)
async def test_job_tags_as_coder_mutates_them(
    aconn: AConn, conn: Conn, import_tags: dict[str, str], job_tags: dict[str, str]
) -> None:
    pool = Pool(conn, import_tags=import_tags)
    conn.commit()
    await run(aconn, pool.create(1))
    assert scalar(conn, "SELECT tags FROM provisioner_jobs WHERE type = 'workspace_build'") == (
        job_tags
    )


async def test_create_five_hundred(aconn: AConn, conn: Conn) -> None:
    pool = Pool(conn)
    conn.commit()
    (result,) = await run(aconn, pool.create(500))
    assert len(set(result.created)) == 500
    assert scalar(conn, "SELECT count(DISTINCT lower(name)) FROM workspaces") == 500
    assert scalar(conn, "SELECT count(*) FROM workspace_builds") == 500
    assert scalar(conn, "SELECT count(*) FROM workspace_build_parameters") == 1000
    # How long it takes is bench/bulk.py's to measure (side by side, on a quiet machine):
    # a timed assertion here would only flake on a loaded one.


async def test_create_only_on_the_active_version_of_a_live_template(
    aconn: AConn, conn: Conn
) -> None:
    pool = Pool(conn)
    make_version(conn, pool.tpl.id, active=True)
    gone = Pool(conn)
    conn.execute("UPDATE templates SET deleted = true WHERE id = %s", (gone.tpl.id,))
    old = Pool(conn)
    conn.execute("UPDATE templates SET deprecated = 'no' WHERE id = %s", (old.tpl.id,))
    conn.commit()
    results = await run(aconn, pool.create(2), gone.create(1), old.create(1))
    assert [r.created for r in results] == [(), (), ()]
    assert scalar(conn, "SELECT count(*) FROM workspaces") == 0


async def test_create_rejected_as_invalid_input(aconn: AConn, conn: Conn) -> None:
    pool = Pool(conn)
    broken = make_version(conn, pool.tpl.id, active=True, import_job=False)
    preset = make_preset(conn, broken, parameters=PARAMS)
    conn.commit()
    async with aconn.transaction():
        with pytest.raises(psycopg.IntegrityError) as caught:
            async with aconn.transaction():
                await store.execute(aconn, plan_for(preset), Create(preset, broken, 2), now=NOW)
        await store.mark_validation_failed(aconn, preset)
    assert any(str(preset) in note for note in getattr(caught.value, "__notes__", []))
    assert scalar(conn, "SELECT prebuild_status FROM template_version_presets WHERE id = %s",
                  preset) == "validation_failed"
    assert scalar(conn, "SELECT count(*) FROM workspaces") == 0


async def test_zero_creates_write_nothing(aconn: AConn, conn: Conn) -> None:
    pool = Pool(conn)
    conn.commit()
    (result,) = await run(aconn, pool.create(0))
    assert result.created == ()


async def test_action_of_another_preset_is_refused(aconn: AConn, conn: Conn) -> None:
    pool = Pool(conn)
    conn.commit()
    with pytest.raises(ValueError, match="in the plan of"):
        await store.execute(aconn, plan_for(uuid4()), pool.create(1), now=NOW)


# ---------------------------------------------------------------------------------------------
# Delete
# ---------------------------------------------------------------------------------------------


async def test_delete_rechecks_every_workspace(aconn: AConn, conn: Conn, listener: Inbox) -> None:
    pool = Pool(conn)
    user = make_user(conn)
    ok = make_prebuild(conn, pool.preset)
    conn.execute("UPDATE workspace_builds SET provisioner_state = 'tfstate' WHERE id = %s",
                 (ok.build_id,))
    claimed = make_prebuild(conn, pool.preset)
    claim(conn, claimed.workspace_id, user)
    failed = make_prebuild(conn, pool.preset, job_status="failed")
    deleting = make_prebuild(conn, pool.preset)
    add_build(conn, deleting.workspace_id, transition="delete", job_status="pending")
    stopped = make_prebuild(conn, pool.preset)
    add_build(conn, stopped.workspace_id, transition="stop")
    theirs = make_prebuild(conn, pool.preset, owner=user)
    gone = make_prebuild(conn, pool.preset)
    conn.execute("UPDATE workspaces SET deleted = true WHERE id = %s", (gone.workspace_id,))
    conn.commit()
    unknown = uuid4()
    asked = (ok, claimed, failed, deleting, stopped, theirs, gone)
    ids = (*(b.workspace_id for b in asked), unknown)
    (result,) = await run(aconn, Delete(pool.preset, ids, DeleteReason.EXPIRED))
    assert result.kind is ActionKind.DELETE
    assert result.deleted == (ok.workspace_id,)
    assert result.skipped == ids[1:]

    (build,) = rows(conn, "SELECT * FROM workspace_builds WHERE workspace_id = %s"
                    " AND build_number = 2", ok.workspace_id)
    assert (build["transition"], build["reason"], build["initiator_id"]) == (
        "delete", "initiator", PREBUILDS_USER_ID)
    assert build["template_version_id"] == pool.tpl.version_id
    assert build["template_version_preset_id"] == pool.preset
    assert build["provisioner_state"] == b"tfstate"
    assert build["deadline"] == build["max_deadline"] == ZERO_TIME
    (job,) = rows(conn, "SELECT * FROM provisioner_jobs WHERE id = %s", build["job_id"])
    assert (job["job_status"], job["type"], job["initiator_id"]) == (
        "pending", "workspace_build", PREBUILDS_USER_ID)
    assert job["tags"] == dict(UNTAGGED) and job["organization_id"] == pool.org
    assert job["input"] == {"workspace_build_id": str(build["id"]), "dry_run": False,
                            "prebuilt_workspace_stage": 1}
    params = rows(conn, "SELECT name, value FROM workspace_build_parameters"
                  " WHERE workspace_build_id = %s", build["id"])
    assert {p["name"]: p["value"] for p in params} == PARAMS
    # Nothing else got a new build; the workspace stays until the provisioner finishes.
    assert scalar(conn, "SELECT count(*) FROM workspace_builds WHERE created_at = %s", NOW) == 1
    assert scalar(conn, "SELECT deleted FROM workspaces WHERE id = %s", ok.workspace_id) is False
    assert postings(listener) == [untagged_posting(pool.org)]


async def test_nothing_left_to_delete_posts_nothing(
    aconn: AConn, conn: Conn, listener: Inbox
) -> None:
    pool = Pool(conn)
    failed = make_prebuild(conn, pool.preset, job_status="failed")
    conn.commit()
    (result,) = await run(aconn, Delete(pool.preset, (failed.workspace_id,), DeleteReason.SURPLUS))
    assert result.deleted == () and result.skipped == (failed.workspace_id,)
    assert postings(listener) == []


async def _wait_until_blocked(observer: AConn, pid: int) -> None:
    deadline = time.monotonic() + 60.0  # generous: only reached when something is wrong
    while time.monotonic() < deadline:
        cur = await observer.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
        )
        row = await cur.fetchone()
        if row is not None and row[0] == "Lock":
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the delete never waited for the claim's row lock")


async def test_delete_racing_a_claim_never_deletes_the_claimed(
    db_url: str, aconn: AConn, conn: Conn
) -> None:
    pool = Pool(conn)
    user = make_user(conn)
    prebuild = make_prebuild(conn, pool.preset)
    conn.commit()
    async with (
        await psycopg.AsyncConnection.connect(db_url) as claimer,
        await psycopg.AsyncConnection.connect(db_url, autocommit=True) as observer,
    ):
        await claimer.execute(
            "UPDATE workspaces SET owner_id = %s, name = 'mine' WHERE id = %s",
            (user, prebuild.workspace_id),
        )
        delete = Delete(pool.preset, (prebuild.workspace_id,), DeleteReason.SURPLUS)
        racing = asyncio.create_task(run(aconn, delete))
        await _wait_until_blocked(observer, aconn.info.backend_pid)
        await claimer.commit()
        (result,) = await racing
    assert result.deleted == () and result.skipped == (prebuild.workspace_id,)
    assert scalar(conn, "SELECT count(*) FROM workspace_builds WHERE workspace_id = %s",
                  prebuild.workspace_id) == 1


async def test_claim_skips_a_prebuild_being_deleted(
    db_url: str, aconn: AConn, conn: Conn
) -> None:
    pool = Pool(conn)
    prebuild = make_prebuild(conn, pool.preset)
    conn.commit()
    action = Delete(pool.preset, (prebuild.workspace_id,), DeleteReason.SURPLUS)
    async with aconn.transaction() as tx:
        result = await store.execute(aconn, plan_for(pool.preset), action, now=NOW)
        assert result.deleted == (prebuild.workspace_id,)
        async with await psycopg.AsyncConnection.connect(db_url) as claimer:
            cur = await claimer.execute(
                "SELECT id FROM workspaces WHERE id = %s FOR UPDATE SKIP LOCKED",
                (prebuild.workspace_id,),
            )
            assert await cur.fetchall() == []
        raise psycopg.Rollback(tx)


# ---------------------------------------------------------------------------------------------
# Cancel pending
# ---------------------------------------------------------------------------------------------


class Matrix:
    """Two templates, several versions, and every kind of job the cancel must leave alone."""

    def __init__(self, conn: Conn) -> None:
        org = make_org(conn)
        self.user = make_user(conn)
        self.tpl = make_template(conn, org)
        old = self.tpl.version_id
        other_old = make_version(conn, self.tpl.id, active=False)
        active = make_version(conn, self.tpl.id, active=True)
        self.preset = make_preset(conn, old, parameters=PARAMS)
        self.sibling = make_preset(conn, old)
        self.on_other_old = make_preset(conn, other_old)
        self.on_active = make_preset(conn, active)
        second = make_template(conn, org)
        self.elsewhere = make_preset(conn, second.version_id)
        make_version(conn, second.id, active=True)

        p = self.preset
        self.targets = [make_prebuild(conn, p, job_status="pending") for _ in range(2)]
        self.untouched: list[BuildRef] = [
            make_prebuild(conn, p, job_status="running"),
            make_prebuild(conn, p, job_status="pending", worker_id=UUID(int=9)),
            make_prebuild(conn, p, job_status="succeeded"),
            make_prebuild(conn, p, job_status="failed"),
            make_prebuild(conn, p, job_status="canceled"),
            make_prebuild(conn, p, job_status="canceling"),
            make_prebuild(conn, p, transition="delete", job_status="pending"),
            make_prebuild(conn, p, transition="stop", job_status="pending"),
            make_prebuild(conn, p, job_status="pending", owner=self.user),
            make_prebuild(conn, p, job_status="pending", initiator=self.user),
            make_prebuild(conn, self.sibling, job_status="pending"),
            make_prebuild(conn, self.on_other_old, job_status="pending"),
            make_prebuild(conn, self.on_active, job_status="pending"),
            make_prebuild(conn, self.elsewhere, job_status="pending"),
        ]
        rebuilt = make_prebuild(conn, p, job_status="succeeded")
        self.untouched.append(add_build(conn, rebuilt.workspace_id, transition="start",
                                        job_status="pending"))

    def job_states(self, conn: Conn) -> dict[UUID, tuple[str, bool, int]]:
        """Per untouched job: status, workspace deleted, builds of the workspace."""
        found = conn.execute(
            "SELECT j.id, j.job_status::text, w.deleted,"
            " (SELECT count(*) FROM workspace_builds x WHERE x.workspace_id = w.id)::int"
            " FROM provisioner_jobs j JOIN workspace_builds b ON b.job_id = j.id"
            " JOIN workspaces w ON w.id = b.workspace_id WHERE j.id = ANY(%s)",
            ([b.job_id for b in self.untouched],),
        ).fetchall()
        return {r[0]: (r[1], r[2], r[3]) for r in found}


async def test_cancel_pending_scope(aconn: AConn, conn: Conn, listener: Inbox) -> None:
    m = Matrix(conn)
    conn.commit()
    before = m.job_states(conn)
    (result,) = await run(aconn, CancelPending(m.preset, expected=2))
    assert result.kind is ActionKind.CANCEL_PENDING and result.canceled == 2
    assert sorted(result.deleted) == sorted(t.workspace_id for t in m.targets)
    assert m.job_states(conn) == before
    for target in m.targets:
        (job,) = rows(conn, "SELECT * FROM provisioner_jobs WHERE id = %s", target.job_id)
        assert job["job_status"] == "canceled"
        assert job["canceled_at"] == job["completed_at"] == NOW and job["error"] is None
        (build,) = rows(conn, "SELECT * FROM workspace_builds WHERE workspace_id = %s"
                        " AND build_number = 2", target.workspace_id)
        assert (build["transition"], build["initiator_id"], build["reason"]) == (
            "delete", PREBUILDS_USER_ID, "initiator")
        assert build["template_version_preset_id"] == m.preset
        assert build["template_version_id"] == m.tpl.version_id
        (done,) = rows(conn, "SELECT * FROM provisioner_jobs WHERE id = %s", build["job_id"])
        assert done["job_status"] == "succeeded" and done["worker_id"] is None
        assert done["started_at"] == done["completed_at"] == NOW
        assert done["input"]["workspace_build_id"] == str(build["id"])
        params = rows(conn, "SELECT name, value FROM workspace_build_parameters"
                      " WHERE workspace_build_id = %s", build["id"])
        assert {p["name"]: p["value"] for p in params} == PARAMS
        assert scalar(conn, "SELECT deleted FROM workspaces WHERE id = %s", target.workspace_id)
    # Issue 10 item 4: provisioners are woken once for the batch (Coder posts one per batch;
    # here one per distinct organization, provisioner and tags: both targets share them).
    assert postings(listener) == [untagged_posting(m.tpl.organization_id)]


async def test_cancel_pending_never_touches_the_active_version(aconn: AConn, conn: Conn) -> None:
    m = Matrix(conn)
    conn.commit()
    before = m.job_states(conn)
    (result,) = await run(aconn, CancelPending(m.on_active, 1))
    assert (result.canceled, result.deleted) == (0, ())
    assert m.job_states(conn) == before


# ---------------------------------------------------------------------------------------------
# Status
# ---------------------------------------------------------------------------------------------


async def test_set_status(aconn: AConn, conn: Conn) -> None:
    pool = Pool(conn)
    conn.commit()
    (limited,) = await run(aconn, SetStatus(pool.preset, PrebuildStatus.HARD_LIMITED))
    assert limited.kind is ActionKind.SET_STATUS
    assert limited.status is PrebuildStatus.HARD_LIMITED
    assert scalar(conn, "SELECT prebuild_status FROM template_version_presets WHERE id = %s",
                  pool.preset) == "hard_limited"
    (healthy,) = await run(aconn, SetStatus(pool.preset, PrebuildStatus.HEALTHY))
    assert healthy.status is PrebuildStatus.HEALTHY
    missing = uuid4()
    (none,) = await run(aconn, SetStatus(missing, PrebuildStatus.HEALTHY))
    assert none.status is None
