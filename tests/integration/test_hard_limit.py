"""The hard failure limit end to end: status stored, creates stop, admins notified once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from factories import ago, make_org, make_prebuild, make_preset, make_template, make_user
from prebuildd.model import PlanConfig
from prebuildd.report import sweep_once

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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
