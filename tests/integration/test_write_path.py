"""Issue 10, items 1-4 and 6: what a reconcile writes, and what it refuses to, on real rows.

* item 1: only a create refused as invalid input stores `validation_failed`; a racing build
  (unique violation) fails one action, is counted and retried, and the rest of the preset's
  work is committed;
* item 2: a preset whose parameters break the version's rules gets no workspace and is stored
  `validation_failed` (Coder's TestInvalidPreset), while its prebuilds on older versions are
  still cleaned up (TestDeletionOfPrebuiltWorkspaceWithInvalidPreset); `status` says why;
* item 3: the version's workspace tags are evaluated into the jobs' tags (creates, deletes,
  postings); a tag prebuildd cannot evaluate holds the creates; the create function checks
  the tags it is given;
* item 4: the orphan deletes of a cancel wake the provisioners (also tests/integration/
  test_actions.py::test_cancel_pending_scope);
* item 6: a claim's job tags are merged as a create's are (empty values dropped, workspace
  tags kept, owner rule for the new owner).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString
from uuid import UUID

import psycopg
import pytest
from psycopg.types.json import Jsonb

from factories import (
    TemplateRef,
    add_agent,
    add_parameter,
    add_workspace_tags,
    make_org,
    make_prebuild,
    make_preset,
    make_template,
    make_user,
    make_version,
)
from prebuildd import store
from prebuildd.claim import claim
from prebuildd.model import PREBUILDS_USER_ID, Create, PlanConfig
from prebuildd.queries import query
from prebuildd.reconciler import Cause, Outcome, Reconciler
from prebuildd.report import print_status
from prebuildd.sweep import sweep_once
from prebuildd.trigger import Trigger

pytestmark = pytest.mark.anyio

Conn = psycopg.Connection[Any]
AConn = psycopg.AsyncConnection[Any]

STATUS: LiteralString = "SELECT prebuild_status::text FROM template_version_presets WHERE id = %s"
CREATED: LiteralString = """
SELECT count(*) FROM workspace_builds
WHERE template_version_preset_id = %s AND build_number = 1 AND transition = 'start'
"""
JOB_TAGS: LiteralString = """
SELECT j.tags FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
WHERE b.template_version_preset_id = %s AND b.transition = %s::workspace_transition
ORDER BY b.created_at, b.id
"""


@pytest.fixture
def listener(db_url: str) -> Iterator[Conn]:
    with psycopg.connect(db_url, autocommit=True) as lconn:
        lconn.execute("LISTEN provisioner_job_posted")
        yield lconn


def postings(listener: Conn, url: str) -> list[dict[str, Any]]:
    """Every wake-up committed so far (a sentinel from another session ends the list)."""
    with psycopg.connect(url, autocommit=True) as other:
        other.execute("SELECT pg_notify('provisioner_job_posted', 'sentinel')")
    got: list[dict[str, Any]] = []
    for n in listener.notifies(timeout=30):
        if n.payload == "sentinel":
            return got
        got.append(json.loads(n.payload))
    raise AssertionError("the sentinel notification never arrived")


def one(conn: Conn, statement: LiteralString, *params: object) -> Any:
    row = conn.execute(statement, params).fetchone()
    assert row is not None
    return row[0]


async def reconcile(aconn: AConn, template: UUID) -> Outcome:
    return await Reconciler(PlanConfig()).reconcile(aconn, [template], Cause(Trigger.EVENT))


# ---------------------------------------------------------------------------------------------
# Item 1: a racing build is retried, never condemns the preset
# ---------------------------------------------------------------------------------------------


async def _wait_until_blocked(observer: AConn, pid: int) -> None:
    for _ in range(1000):
        cur = await observer.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
        )
        row = await cur.fetchone()
        if row is not None and row[0] == "Lock":
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the reconcile never waited for the admin's build")


async def test_build_racing_a_ttl_delete_fails_that_action_only(
    db_url: str, aconn: AConn, conn: Conn
) -> None:
    """TTL expiry plans "delete the expired prebuild, create its replacement" while an admin
    queues a build on that prebuild: the delete's build number collides with the admin's
    (workspace_builds_workspace_id_build_number_key). That failure says nothing about the
    preset: the replacement is created, the preset stays healthy, the failure is counted,
    and the next reconcile finds nothing wrong."""
    tpl = make_template(conn, make_org(conn))
    preset = make_preset(conn, tpl.version_id, desired=1, ttl=3600)
    expired = make_prebuild(conn, preset, created_at=datetime.now(UTC) - timedelta(hours=2))
    admin = make_user(conn)
    conn.commit()

    async with (
        await psycopg.AsyncConnection.connect(db_url) as admin_tx,
        await psycopg.AsyncConnection.connect(db_url, autocommit=True) as observer,
    ):
        # The admin's build 2, not committed yet (its foreign key locks the workspace row).
        job = await admin_tx.execute(
            "INSERT INTO provisioner_jobs (id, created_at, updated_at, organization_id,"
            " initiator_id, provisioner, storage_method, type, input, file_id, tags)"
            " VALUES (gen_random_uuid(), now(), now(), %s, %s, 'terraform', 'file',"
            " 'workspace_build', '{}', gen_random_uuid(), '{}') RETURNING id",
            (tpl.organization_id, admin),
        )
        job_row = await job.fetchone()
        assert job_row is not None
        await admin_tx.execute(
            "INSERT INTO workspace_builds (id, created_at, updated_at, workspace_id,"
            " template_version_id, build_number, transition, initiator_id, job_id, reason)"
            " VALUES (gen_random_uuid(), now(), now(), %s, %s, 2, 'stop', %s, %s, 'initiator')",
            (expired.workspace_id, tpl.version_id, admin, job_row[0]),
        )
        racing = asyncio.create_task(reconcile(aconn, tpl.id))
        await _wait_until_blocked(observer, aconn.info.backend_pid)
        await admin_tx.commit()
        outcome = await racing

    assert len(outcome.failed_presets) == 1
    failed_preset, error = outcome.failed_presets[0]
    assert failed_preset == preset and "duplicate key" in error
    assert [(str(r.kind), len(r.created)) for r in outcome.results] == [("create", 1)]
    assert one(conn, STATUS, preset) == "healthy"
    assert one(conn, CREATED, preset) == 2  # the expired prebuild and its replacement
    # The admin's build stands; nothing of the failed delete was written.
    builds = conn.execute(
        "SELECT build_number, transition::text, initiator_id FROM workspace_builds"
        " WHERE workspace_id = %s ORDER BY build_number",
        (expired.workspace_id,),
    ).fetchall()
    assert builds == [(1, "start", PREBUILDS_USER_ID), (2, "stop", admin)]
    conn.commit()
    # Retried next reconcile: the expired prebuild is now the admin's stopped workspace (not
    # running), and the replacement is starting: nothing to do, nothing failing.
    again = await reconcile(aconn, tpl.id)
    assert again.failed_presets == [] and again.results == []
    assert one(conn, STATUS, preset) == "healthy"


async def test_failed_import_is_invalid_input_pending_import_is_not(
    aconn: AConn, conn: Conn
) -> None:
    """The create function's own verdict: a version whose import failed can never be built
    (23V01 -> validation_failed, as Coder's builder refuses it); one still importing is
    retried."""
    org = make_org(conn)
    failed = make_template(conn, org)
    failed_version = make_version(conn, failed.id, active=True, import_status="failed")
    doomed = make_preset(conn, failed_version, desired=1)
    pending = make_template(conn, org)
    pending_version = make_version(conn, pending.id, active=True, import_status="pending")
    waiting = make_preset(conn, pending_version, desired=1)
    conn.commit()

    condemned = await reconcile(aconn, failed.id)
    assert [p for p, _ in condemned.failed_presets] == [doomed]
    assert "cannot be built" in condemned.failed_presets[0][1]
    assert one(conn, STATUS, doomed) == "validation_failed"

    retried = await reconcile(aconn, pending.id)
    assert [p for p, _ in retried.failed_presets] == [waiting]
    assert "still being imported" in retried.failed_presets[0][1]
    assert one(conn, STATUS, waiting) == "healthy"
    assert one(conn, "SELECT count(*) FROM workspaces") == 0


async def test_create_function_raises_the_dedicated_code(aconn: AConn, conn: Conn) -> None:
    tpl = make_template(conn, make_org(conn), import_job=False)
    preset = make_preset(conn, tpl.version_id, desired=1)
    conn.commit()
    plan = (await Reconciler(PlanConfig(), dry_run=True).reconcile(
        aconn, [tpl.id], Cause(Trigger.CLI))).plans[0]
    await aconn.commit()
    create = Create(preset, tpl.version_id, 1)
    with pytest.raises(psycopg.Error) as caught:
        async with aconn.transaction():
            await store.execute(aconn, plan, create, now=datetime.now(UTC))
    assert caught.value.sqlstate == store.INVALID_PRESET and store.is_invalid_preset(caught.value)
    # Class 23 (an IntegrityError), but a plain unique violation is not it.
    assert isinstance(caught.value, psycopg.IntegrityError)
    assert not store.is_invalid_preset(psycopg.errors.UniqueViolation("duplicate key"))


# ---------------------------------------------------------------------------------------------
# Item 2: invalid presets are not built; their old prebuilds are still cleaned up
# ---------------------------------------------------------------------------------------------


async def test_invalid_preset_creates_nothing_and_is_stored_validation_failed(
    db_url: str, aconn: AConn, conn: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    """Coder's TestInvalidPreset: a required parameter without a default that the preset
    does not set. Reconciled again and again: no workspace, ever."""
    tpl = make_template(conn, make_org(conn))
    add_parameter(conn, tpl.version_id, "required-param", type="bool", required=True)
    add_parameter(conn, tpl.version_id, "region", options=["eu", "us"], default_value="eu")
    preset = make_preset(conn, tpl.version_id, desired=1, parameters={"region": "eu"})
    conn.commit()

    first = await reconcile(aconn, tpl.id)
    (plan,) = first.plans
    assert [str(e.kind) for e in plan.errors] == ["invalid_parameter"]
    assert "'required-param'" in plan.errors[0].message
    assert [str(r.kind) for r in first.results] == ["set_status"]
    for _ in range(3):
        await reconcile(aconn, tpl.id)
    assert one(conn, STATUS, preset) == "validation_failed"
    assert one(conn, "SELECT count(*) FROM workspaces WHERE template_id = %s", tpl.id) == 0
    assert one(conn, "SELECT count(*) FROM provisioner_jobs WHERE type = 'workspace_build'") == 0

    # `prebuildd status` says why.
    print_status(await sweep_once(db_url, PlanConfig(), dry_run=True), _Stdout())
    out = capsys.readouterr().out
    assert "validation_failed" in out
    assert "why no prebuilds are created:" in out
    assert "'required-param': required, and the preset sets no value for it" in out


class _Stdout:
    """print_status writes to a TextIO; capsys captures sys.stdout."""

    def write(self, text: str) -> int:
        print(text, end="")
        return len(text)


async def test_prebuilds_of_an_old_version_are_deleted_though_the_new_preset_is_invalid(
    aconn: AConn, conn: Conn
) -> None:
    """Coder's TestDeletionOfPrebuiltWorkspaceWithInvalidPreset: version 2 adds a required
    parameter the preset does not set; version 1's prebuild is still deleted, with version
    1's parameters, and nothing is created for version 2."""
    tpl = make_template(conn, make_org(conn))
    old = make_preset(conn, tpl.version_id, desired=1, name="default")
    prebuild = make_prebuild(conn, old)
    v2 = make_version(conn, tpl.id, active=True)
    add_parameter(conn, v2, "required-param", type="bool", required=True)
    new = make_preset(conn, v2, desired=1, name="default")
    conn.commit()

    await reconcile(aconn, tpl.id)
    builds = conn.execute(
        "SELECT transition::text FROM workspace_builds WHERE workspace_id = %s"
        " ORDER BY build_number",
        (prebuild.workspace_id,),
    ).fetchall()
    assert builds == [("start",), ("delete",)]
    assert one(conn, STATUS, new) == "validation_failed"
    assert one(conn, CREATED, new) == 0


async def test_valid_parameters_create(aconn: AConn, conn: Conn) -> None:
    tpl = make_template(conn, make_org(conn))
    add_parameter(conn, tpl.version_id, "cpus", type="number", validation_min=1,
                  validation_max=8, default_value="2")
    add_parameter(conn, tpl.version_id, "name", validation_regex="^[a-z]+$",
                  validation_error="lower case")
    preset = make_preset(conn, tpl.version_id, desired=2, parameters={"name": "dev"})
    conn.commit()
    outcome = await reconcile(aconn, tpl.id)
    assert outcome.failed_presets == [] and outcome.plans[0].errors == ()
    assert one(conn, CREATED, preset) == 2
    assert one(conn, STATUS, preset) == "healthy"


# ---------------------------------------------------------------------------------------------
# Item 3: workspace tags
# ---------------------------------------------------------------------------------------------

ROUTING = {"region": "data.coder_parameter.region.value", "pool": '"gpu-${"a"}"'}


def _routed_template(conn: Conn, import_tags: Mapping[str, str]) -> tuple[TemplateRef, UUID]:
    tpl = make_template(conn, make_org(conn), import_tags=import_tags)
    add_parameter(conn, tpl.version_id, "region", options=["eu", "us"], default_value="us")
    add_workspace_tags(conn, tpl.version_id, ROUTING)
    preset = make_preset(conn, tpl.version_id, desired=2, parameters={"region": "eu"})
    return tpl, preset


async def test_jobs_carry_the_evaluated_workspace_tags(
    db_url: str, aconn: AConn, conn: Conn, listener: Conn
) -> None:
    import_tags = {"scope": "organization", "owner": "", "os": "linux", "region": "default"}
    tpl, preset = _routed_template(conn, import_tags)
    conn.commit()
    outcome = await reconcile(aconn, tpl.id)
    assert outcome.failed_presets == []
    expected = {"scope": "organization", "owner": "", "os": "linux", "region": "eu",
                "pool": "gpu-a"}
    tags = [row[0] for row in conn.execute(JOB_TAGS, (preset, "start"))]
    assert tags == [expected, expected]
    assert postings(listener, db_url) == [
        {"organization_id": str(tpl.organization_id), "type": "terraform", "tags": expected}
    ]

    # A delete goes where the prebuild was built: its job repeats the workspace tags.
    conn.execute(
        "UPDATE template_version_presets SET desired_instances = 1 WHERE id = %s", (preset,)
    )
    conn.execute(
        "UPDATE provisioner_jobs SET started_at = now(), completed_at = now(),"
        " worker_id = gen_random_uuid() WHERE id IN (SELECT job_id FROM workspace_builds"
        " WHERE template_version_preset_id = %s)",
        (preset,),
    )
    conn.commit()
    deleted = await reconcile(aconn, tpl.id)
    assert [str(r.kind) for r in deleted.results] == ["delete"]
    assert [row[0] for row in conn.execute(JOB_TAGS, (preset, "delete"))] == [expected]


async def test_unevaluable_workspace_tag_holds_creates(
    db_url: str, aconn: AConn, conn: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    tpl = make_template(conn, make_org(conn))
    add_workspace_tags(conn, tpl.version_id, {"region": "var.region"})
    preset = make_preset(conn, tpl.version_id, desired=2)
    conn.commit()
    outcome = await reconcile(aconn, tpl.id)
    (plan,) = outcome.plans
    assert plan.actions == ()
    assert [str(e.kind) for e in plan.errors] == ["unevaluated_workspace_tag"]
    assert one(conn, CREATED, preset) == 0
    assert one(conn, STATUS, preset) == "healthy"
    print_status(await sweep_once(db_url, PlanConfig(), dry_run=True), _Stdout())
    out = capsys.readouterr().out
    assert "healthy (creates held)" in out
    assert "workspace tag 'region' = 'var.region': template variables" in out


@pytest.mark.parametrize(
    ("given", "refusal"),
    [
        ({"region": "eu"}, "pool (missing)"),
        ({"region": "eu", "pool": "x", "extra": "y"}, "extra (not declared by the version)"),
        ({"region": 1, "pool": "x"}, "region (not a string)"),
    ],
)
async def test_create_function_checks_the_tags_it_is_given(
    aconn: AConn, conn: Conn, given: dict[str, Any], refusal: str
) -> None:
    tpl, preset = _routed_template(conn, {"scope": "organization"})
    conn.commit()
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=re.escape(refusal)):
        await aconn.execute(
            query("create_prebuilds"),
            {"preset_id": preset, "template_version_id": tpl.version_id, "count": 1,
             "now": datetime.now(UTC), "trace_metadata": Jsonb({}),
             "workspace_tags": Jsonb(given)},
        )
    await aconn.rollback()
    assert one(conn, "SELECT count(*) FROM workspaces") == 0


async def test_workspace_tags_cannot_choose_the_owner(aconn: AConn, conn: Conn) -> None:
    tpl = make_template(conn, make_org(conn), import_tags={"scope": "user", "owner": "x"})
    add_workspace_tags(conn, tpl.version_id, {"owner": '"someone-else"', "gpu": '""'})
    preset = make_preset(conn, tpl.version_id, desired=1)
    conn.commit()
    await reconcile(aconn, tpl.id)
    (tags,) = [row[0] for row in conn.execute(JOB_TAGS, (preset, "start"))]
    # Scope as imported, owner derived from it; an empty workspace tag value is kept.
    assert tags == {"scope": "user", "owner": str(PREBUILDS_USER_ID), "gpu": ""}


# ---------------------------------------------------------------------------------------------
# Item 4: the orphan deletes of a cancel wake provisioners, at commit
# ---------------------------------------------------------------------------------------------


async def test_cancel_posts_once_per_tag_set_at_commit(
    db_url: str, aconn: AConn, conn: Conn, listener: Conn
) -> None:
    tpl = make_template(conn, make_org(conn))
    old = make_preset(conn, tpl.version_id, desired=3)
    for _ in range(3):
        make_prebuild(conn, old, job_status="pending")
    make_version(conn, tpl.id, active=True)
    conn.commit()
    async with aconn.transaction():
        outcome = await Reconciler(PlanConfig()).reconcile(aconn, [tpl.id], Cause(Trigger.EVENT))
        assert [r.canceled for r in outcome.results] == [3]
    untagged = {"scope": "organization", "owner": ""}
    assert postings(listener, db_url) == [
        {"organization_id": str(tpl.organization_id), "type": "terraform", "tags": untagged}
    ]


# ---------------------------------------------------------------------------------------------
# Item 6: a claim's job tags agree with a create's
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("import_tags", "expected"),
    [
        pytest.param({"scope": "organization", "foo": "", "os": "linux"},
                     {"scope": "organization", "owner": "", "os": "linux"}, id="empty-dropped"),
        pytest.param({"scope": "user", "owner": "x"}, {"scope": "user", "owner": "USER"},
                     id="user-scoped"),
    ],
)
async def test_claim_tags_agree_with_create_tags(
    aconn: AConn, conn: Conn, import_tags: dict[str, str], expected: dict[str, str]
) -> None:
    tpl = make_template(conn, make_org(conn), import_tags=import_tags)
    add_workspace_tags(conn, tpl.version_id, {"region": '"eu"'})
    preset = make_preset(conn, tpl.version_id, desired=1)
    user = make_user(conn)
    conn.commit()
    await reconcile(aconn, tpl.id)
    # The provisioner builds it, with a ready agent.
    job = one(conn, "SELECT job_id FROM workspace_builds WHERE template_version_preset_id = %s",
              preset)
    conn.execute("UPDATE provisioner_jobs SET started_at = now(), completed_at = now(),"
                 " worker_id = gen_random_uuid() WHERE id = %s", (job,))
    add_agent(conn, job)
    conn.commit()
    (create_tags,) = [row[0] for row in conn.execute(JOB_TAGS, (preset, "start"))]

    claimed = claim(conn, preset_id=preset, user_id=user, name="mine")
    assert claimed is not None
    conn.commit()
    claim_tags = one(
        conn,
        "SELECT j.tags FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id"
        " WHERE b.workspace_id = %s AND b.build_number = 2",
        claimed.workspace_id,
    )
    owner = str(user)
    want = {k: (owner if v == "USER" else v) for k, v in expected.items()} | {"region": "eu"}
    assert claim_tags == want
    # The same merge as the create's, but for the new owner.
    assert {k: v for k, v in create_tags.items() if k != "owner"} == {
        k: v for k, v in claim_tags.items() if k != "owner"
    }


# ---------------------------------------------------------------------------------------------
# Items 3 x the cap on pending prebuild jobs: a create is counted by the tags its jobs get
# ---------------------------------------------------------------------------------------------


async def test_cap_counts_each_preset_by_the_tag_set_its_jobs_get(
    aconn: AConn, conn: Conn
) -> None:
    """Two presets of one version routed to two regions are two tag sets: each gets its own
    room under the cap, and the jobs already queued for a region count against it alone."""
    tpl = make_template(conn, make_org(conn))
    add_parameter(conn, tpl.version_id, "region", options=["eu", "us"], default_value="us")
    add_workspace_tags(conn, tpl.version_id, {"region": "data.coder_parameter.region.value"})
    eu = make_preset(conn, tpl.version_id, desired=3, parameters={"region": "eu"})
    us = make_preset(conn, tpl.version_id, desired=3, parameters={"region": "us"})
    conn.commit()
    capped = Reconciler(PlanConfig(max_pending_prebuild_jobs=2))
    for _ in range(3):
        await capped.reconcile(aconn, [tpl.id], Cause(Trigger.EVENT))
    assert (one(conn, CREATED, eu), one(conn, CREATED, us)) == (2, 2)
    region_of_jobs = {
        preset: {row[0]["region"] for row in conn.execute(JOB_TAGS, (preset, "start"))}
        for preset in (eu, us)
    }
    assert region_of_jobs == {eu: {"eu"}, us: {"us"}}


def test_the_tag_set_counted_is_the_one_the_routed_jobs_get(conn: Conn) -> None:
    tpl, preset = _routed_template(conn, {"scope": "organization", "os": "linux"})
    tags = {"region": "eu", "pool": "gpu-a"}
    (workspace,) = [
        r[0]
        for r in conn.execute(
            query("create_prebuilds_capped"),
            {"preset_id": preset, "template_version_id": tpl.version_id, "count": 1,
             "now": datetime.now(UTC), "trace_metadata": Jsonb({}),
             "workspace_tags": Jsonb(tags), "max_pending": 5},
        ).fetchall()
    ]
    written = one(
        conn,
        "SELECT j.tags FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id"
        " WHERE b.workspace_id = %s",
        workspace,
    )
    counted = conn.execute(
        "SELECT organization_id, tags FROM prebuildd.throttle_keys(ARRAY[%s]::uuid[], %s)",
        (tpl.version_id, Jsonb([tags])),
    ).fetchone()
    assert counted == (tpl.organization_id, written)
    assert written["region"] == "eu" and written["os"] == "linux"
    assert one(conn, "SELECT prebuildd.pending_prebuild_creates(%s, %s)",
               tpl.organization_id, Jsonb(written)) == 1
