"""The hard failure limit end to end: status stored, creates stop, admins notified once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import psycopg
import pytest

from factories import ago, make_org, make_prebuild, make_preset, make_template, make_user
from prebuildd import store
from prebuildd.model import Plan, PlanConfig, PrebuildStatus, Preset, PresetState, SetStatus
from prebuildd.queries import query
from prebuildd.sweep import sweep_once

pytestmark = pytest.mark.anyio


async def test_hard_limited_preset_stops_creating_and_notifies_template_admins(
    db_url: str,
) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        preset = make_preset(conn, tpl.version_id, name="gpu", desired=2)
        # Three failed creates in a row, outside the backoff window so only the limit applies.
        for minutes in (90, 80, 70):
            make_prebuild(conn, preset, job_status="failed", created_at=ago(now, minutes=minutes))
        admin = make_user(conn)
        member = make_user(conn)
        conn.execute("UPDATE users SET rbac_roles = '{template-admin}' WHERE id = %s", (admin,))
        conn.commit()

    config = PlanConfig(failure_hard_limit=3, backoff_lookback=timedelta(minutes=30))
    outcomes = await sweep_once(db_url, config, dry_run=False)
    await sweep_once(db_url, config, dry_run=False)  # again: no second notification

    kinds = [str(r.kind) for o in outcomes for r in o.results]
    assert "create" not in kinds
    with psycopg.connect(db_url) as conn:
        status = conn.execute(
            "SELECT prebuild_status FROM template_version_presets WHERE id = %s", (preset,)
        ).fetchone()
        messages = conn.execute(
            "SELECT user_id, method, payload->'labels'->>'preset', created_by"
            " FROM notification_messages ORDER BY method"
        ).fetchall()
        builds = conn.execute(
            "SELECT count(*) FROM workspace_builds WHERE template_version_preset_id = %s",
            (preset,),
        ).fetchone()
    assert status == ("hard_limited",)
    assert builds == (3,), "a hard-limited preset gets no new prebuilds"
    assert {m[0] for m in messages} == {admin}, "only template admins are notified"
    assert member not in {m[0] for m in messages}
    assert sorted(m[1] for m in messages) == ["inbox", "smtp"]
    assert {m[2] for m in messages} == {"gpu"}
    assert {m[3] for m in messages} == {"prebuildd"}


async def test_admins_hear_once_a_day_however_often_the_limit_is_flipped(db_url: str) -> None:
    """The notification is sent only for a preset that is hard_limited, dated by the server:
    flipping the status back and forth (what a leaked credential could do) reaches an admin
    once per method and day, and a healthy preset notifies no one."""
    with psycopg.connect(db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        preset = make_preset(conn, tpl.version_id, desired=1)
        admin = make_user(conn)
        conn.execute("UPDATE users SET rbac_roles = '{owner}' WHERE id = %s", (admin,))
        conn.commit()

    async with await psycopg.AsyncConnection.connect(db_url) as aconn:
        params = {"preset_id": preset, "default_method": "smtp", "inbox": True}
        cursor = await aconn.execute(query("notify_hard_limited"), params)
        assert await cursor.fetchall() == [], "a healthy preset notifies no one"
        await aconn.commit()
        # Each flip with another caller's clock, days apart: the server's day decides.
        for day, status in enumerate(("hard_limited", "healthy") * 3):
            async with aconn.transaction():
                action = SetStatus(preset, PrebuildStatus(status))
                at = datetime.now(UTC) + timedelta(days=day)
                await store.execute(aconn, _plan_shell(preset), action, now=at)

    with psycopg.connect(db_url) as conn:
        messages = conn.execute(
            "SELECT user_id, method::text, created_at FROM notification_messages ORDER BY method"
        ).fetchall()
        server_now = conn.execute("SELECT now()").fetchone()
    assert [(m[0], m[1]) for m in messages] == [(admin, "inbox"), (admin, "smtp")]
    assert server_now is not None
    assert all(abs(m[2] - server_now[0]) < timedelta(hours=1) for m in messages)


def _plan_shell(preset_id: UUID) -> Plan:
    """A plan shell: `execute` only needs the preset's id from it."""
    preset = Preset(
        id=preset_id, name="p", template_id=UUID(int=0), template_name="t",
        organization_id=UUID(int=0), organization_name="o", template_version_id=UUID(int=0),
        template_version_name="v", using_active_version=True, template_deleted=False,
        template_deprecated=False, desired_instances=0,
    )  # fmt: skip
    return Plan(preset, PresetState(0, 0, 0, 0, 0, 0, 0, 0, 0, None, False), (), None)
