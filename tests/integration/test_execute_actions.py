"""Every action of a reconcile in one call (prebuildd.execute_actions), against PostgreSQL.

What the one call must keep from one savepoint per action: each action is rolled back alone
when it fails, and only a create refused as invalid input condemns its preset; a call that
fails as a whole (a statement timeout, which PL/pgSQL's per-action blocks let through) leaves
nothing behind and is replayed one action per statement. And what it adds: the service's own
writes are not announced back to it as events, while everybody else's still are.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from _inbox import Inbox
from psycopg import sql

from factories import make_org, make_prebuild, make_preset, make_template, make_version, promote
from prebuildd import store
from prebuildd.events import EventKind
from prebuildd.model import ActionKind, CancelPending, Create, Delete, DeleteReason, PlanConfig
from prebuildd.reconciler import Cause, Reconciler
from prebuildd.trigger import Trigger

pytestmark = pytest.mark.anyio

Conn = psycopg.Connection[Any]
AConn = psycopg.AsyncConnection[Any]
NOW = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


@pytest.fixture
def inbox(db_url: str) -> Iterator[Inbox]:
    box = Inbox(db_url)
    try:
        yield box
    finally:
        box.close()


def _count(conn: Conn, statement: Any, *args: object) -> int:
    row = conn.execute(statement, args).fetchone()
    assert row is not None
    return int(row[0])


PENDING_STARTS = (
    "SELECT count(*) FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id"
    " WHERE b.template_version_preset_id = %s AND b.transition = 'start'"
    " AND j.job_status = 'pending'"
)
DELETE_BUILDS = (
    "SELECT count(*) FROM workspace_builds WHERE workspace_id = %s AND transition = 'delete'"
)
CANCELED = (
    "SELECT count(*) FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id"
    " WHERE b.template_version_preset_id = %s AND j.job_status = 'canceled'"
)


class Promoted:
    """A template promoted from v1 to v2: v1 has a running prebuild and a queued create."""

    def __init__(self, conn: Conn) -> None:
        self.tpl = make_template(conn, make_org(conn))
        self.old = make_preset(conn, self.tpl.version_id, desired=1)
        self.running = make_prebuild(conn, self.old).workspace_id
        make_prebuild(conn, self.old, job_status="pending")
        self.v2 = make_version(conn, self.tpl, active=False)
        self.new = make_preset(conn, self.v2, desired=2)
        promote(conn, self.tpl.id, self.v2)


async def test_one_call_runs_every_action_and_isolates_a_failure(
    aconn: AConn, conn: Conn
) -> None:
    world = Promoted(conn)
    broken_tpl = make_template(conn, make_org(conn), import_job=False)
    broken = make_preset(conn, broken_tpl.version_id, desired=1)
    conn.commit()
    actions = [
        Create(world.new, world.v2, 2),
        Create(broken, broken_tpl.version_id, 1),  # no import job: invalid input, 23V01
        Delete(world.old, (world.running,), DeleteReason.INACTIVE),
        CancelPending(world.old, 1),
    ]
    async with aconn.transaction():
        results = await store.execute_actions(aconn, actions, now=NOW)
    created, refused, deleted, canceled = results
    assert isinstance(created, store.ActionResult) and len(created.created) == 2
    assert isinstance(refused, store.ActionFailure)
    assert refused.invalid_preset and refused.kind is ActionKind.CREATE
    assert refused.preset_id == broken and "cannot be built" in refused.message
    assert isinstance(deleted, store.ActionResult) and deleted.deleted == (world.running,)
    assert isinstance(canceled, store.ActionResult) and canceled.canceled == 1
    # The failed create was rolled back alone; the others committed.
    assert _count(conn, PENDING_STARTS, world.new) == 2
    assert _count(conn, DELETE_BUILDS, world.running) == 1
    assert _count(conn, CANCELED, world.old) == 1
    assert _count(conn, "SELECT count(*) FROM workspaces WHERE template_id = %s",
                  broken_tpl.id) == 0


async def test_the_services_own_writes_are_not_echoed(
    aconn: AConn, conn: Conn, inbox: Inbox
) -> None:
    world = Promoted(conn)
    conn.commit()
    inbox.drain()
    outcome = await Reconciler(PlanConfig()).reconcile(aconn, [world.tpl.id], Cause(Trigger.CLI))
    assert outcome.actions_by_kind() == {"create": 1, "delete": 1, "cancel_pending": 1}
    assert _count(conn, CANCELED, world.old) == 1
    # Builds inserted and a job canceled by the reconcile: no event comes back for them.
    assert inbox.kinds() == []
    # The same kinds of writes from anyone else are announced: a provisioner failing the
    # create's job (its success on the active version is never announced), and a build the
    # prebuilds user inserts outside a reconcile.
    conn.execute(
        "UPDATE provisioner_jobs SET started_at = now(), completed_at = now(), updated_at = now(),"
        " error = 'boom' WHERE id IN (SELECT b.job_id FROM workspace_builds b"
        " WHERE b.template_version_preset_id = %s AND b.transition = 'start')",
        (world.new,),
    )
    conn.commit()
    async with aconn.transaction():
        await store.execute(aconn, _shell(world.new), Create(world.new, world.v2, 1), now=NOW)
    kinds = inbox.kinds()
    assert (EventKind.JOB_STATUS, world.tpl.id) in kinds
    assert (EventKind.BUILD_INSERTED, world.tpl.id) in kinds
    # The marker is the call's, in its transaction: nothing lingers on the connection.
    async with aconn.transaction():
        cur = await aconn.execute("SELECT current_setting('prebuildd.own_writes', true)")
        row = await cur.fetchone()
    assert row is not None and row[0] in (None, "", "off")


async def test_a_call_that_fails_as_a_whole_is_replayed_one_action_at_a_time(
    db_url: str, aconn: AConn, conn: Conn
) -> None:
    """A statement timeout is not caught by the per-action blocks: the call is rolled back to
    its savepoint and every action replayed alone, so only the one that waits fails."""
    world = Promoted(conn)
    conn.commit()
    held = threading.Event()
    release = threading.Event()

    def hold_the_running_prebuild() -> None:
        with psycopg.connect(db_url) as other:
            other.execute("SELECT 1 FROM workspaces WHERE id = %s FOR UPDATE", (world.running,))
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold_the_running_prebuild)
    holder.start()
    try:
        assert held.wait(30)
        await aconn.execute("SET statement_timeout = '300ms'")
        await aconn.commit()  # the session's setting; the reconcile opens its own transaction
        outcome = await Reconciler(PlanConfig()).reconcile(
            aconn, [world.tpl.id], Cause(Trigger.CLI)
        )
    finally:
        release.set()
        holder.join()
    assert outcome.actions_by_kind() == {"create": 1, "cancel_pending": 1}
    assert [p for p, _ in outcome.failed_presets] == [world.old]
    assert "statement timeout" in outcome.failed_presets[0][1]
    assert _count(conn, PENDING_STARTS, world.new) == 2
    assert _count(conn, CANCELED, world.old) == 1
    assert _count(conn, DELETE_BUILDS, world.running) == 0
    # Nothing was condemned: a timeout is retried by the next reconcile.
    status = conn.execute(
        "SELECT prebuild_status::text FROM template_version_presets WHERE id = %s", (world.old,)
    ).fetchone()
    assert status == ("healthy",)


def test_the_call_refuses_what_is_not_a_list_of_actions(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("SELECT * FROM prebuildd.execute_actions('{}'::jsonb, now(), '{}'::jsonb)")
    conn.rollback()
    rows = conn.execute(
        "SELECT ordinal, workspace_ids, error_code FROM prebuildd.execute_actions("
        "'[{\"kind\": \"resize\"}]'::jsonb, now(), '{}'::jsonb)"
    ).fetchall()
    assert rows == [(0, None, "22023")]


def _shell(preset: Any) -> Any:
    from prebuildd.model import Plan, Preset, PresetState

    shell = Preset(
        id=preset, name="p", template_id=preset, template_name="t", organization_id=preset,
        organization_name="o", template_version_id=preset, template_version_name="v",
        using_active_version=True, template_deleted=False, template_deprecated=False,
        desired_instances=0,
    )
    return Plan(shell, PresetState(0, 0, 0, 0, 0, 0, 0, 0, 0, None, False), (), None)


class TwoOldPresets:
    """A template promoted from v1 to v2, with a running prebuild in each of v1's two presets."""

    def __init__(self, conn: Conn) -> None:
        self.tpl = make_template(conn, make_org(conn))
        self.old = (
            make_preset(conn, self.tpl.version_id, desired=1),
            make_preset(conn, self.tpl.version_id, desired=1),
        )
        self.running = tuple(make_prebuild(conn, p).workspace_id for p in self.old)
        self.v2 = make_version(conn, self.tpl, active=False)
        promote(conn, self.tpl.id, self.v2)


async def test_deletes_run_together_and_each_reports_its_own(aconn: AConn, conn: Conn) -> None:
    world = TwoOldPresets(conn)
    stranger = make_prebuild(conn, world.old[0], job_status="pending").workspace_id
    conn.commit()
    (a, b), (wa, wb) = world.old, world.running
    actions = [
        Delete(a, (wa, stranger), DeleteReason.INACTIVE),  # stranger: not deletable, skipped
        Delete(b, (wb,), DeleteReason.INACTIVE),
    ]
    async with aconn.transaction():
        results = await store.execute_actions(aconn, actions, now=NOW)
    first, second = results
    assert isinstance(first, store.ActionResult) and isinstance(second, store.ActionResult)
    assert (first.deleted, first.skipped) == ((wa,), (stranger,))
    assert (second.deleted, second.skipped) == ((wb,), ())
    assert [_count(conn, DELETE_BUILDS, w) for w in (wa, wb, stranger)] == [1, 1, 0]


async def test_a_failing_delete_among_others_fails_alone(aconn: AConn, conn: Conn) -> None:
    """The deletes' joint call fails as a whole; each then runs alone, so only the failing
    one fails and the other's delete build stands."""
    world = TwoOldPresets(conn)
    (a, b), (wa, wb) = world.old, world.running
    # A trigger, committed (the call runs on another connection), only for wb's delete build.
    conn.execute(
        "CREATE FUNCTION public.refuse_one_build() RETURNS trigger LANGUAGE plpgsql AS"
        " $$BEGIN RAISE EXCEPTION 'refused for the test' USING ERRCODE = 'P0001'; END$$"
    )
    conn.execute(
        sql.SQL(
            "CREATE TRIGGER refuse_one_build BEFORE INSERT ON workspace_builds FOR EACH ROW"
            " WHEN (NEW.workspace_id = {}::uuid) EXECUTE FUNCTION public.refuse_one_build()"
        ).format(sql.Literal(str(wb)))
    )
    conn.commit()
    try:
        actions = [Delete(a, (wa,), DeleteReason.INACTIVE), Delete(b, (wb,), DeleteReason.INACTIVE)]
        async with aconn.transaction():
            results = await store.execute_actions(aconn, actions, now=NOW)
    finally:
        conn.execute("DROP TRIGGER refuse_one_build ON workspace_builds")
        conn.execute("DROP FUNCTION public.refuse_one_build()")
        conn.commit()
    first, second = results
    assert isinstance(first, store.ActionResult) and first.deleted == (wa,)
    assert isinstance(second, store.ActionFailure) and second.preset_id == b
    assert second.sqlstate == "P0001" and "refused for the test" in second.message
    assert [_count(conn, DELETE_BUILDS, w) for w in (wa, wb)] == [1, 0]
