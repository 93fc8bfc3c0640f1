"""Full reconciles on real rows: every latest-build state of a prebuild, on an active or an
inactive version, of a live or deleted template, reconciled twice (the second sweep must find
nothing left to do).

The matrix shares one database (`module_db_url`): each case seeds a template of its own and
judges only what the sweeps did to that template's presets (a sweep reconciles every
template, so the earlier cases' templates are swept again, as in a real fleet). The pause
test is global and keeps a database of its own.
"""

from __future__ import annotations

import itertools
from typing import Any
from uuid import UUID

import psycopg
import pytest

from factories import make_org, make_prebuild, make_preset, make_template, make_version, set_paused
from prebuildd.model import PlanConfig
from prebuildd.reconciler import Outcome
from prebuildd.store import ActionResult
from prebuildd.sweep import sweep_once

pytestmark = pytest.mark.anyio

TRANSITIONS = ("start", "stop", "delete")
STATUSES = ("pending", "running", "canceling", "succeeded", "failed", "canceled")
# Where the preset lives: its version active on a live template, superseded by a newer
# active version, or the active version of a soft-deleted or deprecated template.
PLACES = ("active", "inactive", "template_deleted", "template_deprecated")


def expected(transition: str, status: str, place: str) -> dict[str, int]:
    """What one sweep must do for a preset (desired 1) whose only prebuild is in this state."""
    if place != "active":
        if transition == "start" and status == "succeeded":
            return {"delete": 1}  # a running prebuild of a retired version goes
        if transition == "start" and status == "pending":
            return {"cancel": 1}  # queued, never picked up: canceled, never built
        return {}  # building, failed or stopped: left alone (evidence, or in flight)
    if transition == "start" and status in ("pending", "running", "succeeded"):
        return {}  # running, or starting: counts toward desired
    if transition == "start" and status == "failed":
        return {}  # a fresh failure: back off before trying again
    return {"create": 1}  # not running and not starting: replace it, keep the evidence


def _done(outcomes: list[Outcome], template: UUID | None = None) -> dict[str, int]:
    """Actions done, by kind; only on `template`'s presets when given."""
    done: dict[str, int] = {}
    for result in _results(outcomes, template):
        for key, n in (
            ("create", len(result.created)),
            ("delete", len(result.deleted) if str(result.kind) == "delete" else 0),
            ("cancel", result.canceled),
        ):
            if n:
                done[key] = done.get(key, 0) + n
    return done


def _results(outcomes: list[Outcome], template: UUID | None) -> list[ActionResult]:
    results = [r for o in outcomes for r in o.results]
    if template is None:
        return results
    ours = {p.preset.id for o in outcomes for p in o.plans if p.preset.template_id == template}
    return [r for r in results if r.preset_id in ours]


def _seed(
    conn: psycopg.Connection[Any], transition: str, status: str, place: str
) -> tuple[UUID, UUID]:
    tpl = make_template(conn, make_org(conn))
    preset = make_preset(conn, tpl.version_id, desired=1)
    build = make_prebuild(conn, preset, transition=transition, job_status=status)
    if place == "inactive":
        newer = make_version(conn, tpl.id, active=True)
        make_preset(conn, newer, desired=0)
    elif place == "template_deleted":
        conn.execute("UPDATE templates SET deleted = true WHERE id = %s", (tpl.id,))
    elif place == "template_deprecated":
        conn.execute("UPDATE templates SET deprecated = 'use v2' WHERE id = %s", (tpl.id,))
    return tpl.id, build.workspace_id


@pytest.mark.parametrize(
    ("transition", "status", "place"), list(itertools.product(TRANSITIONS, STATUSES, PLACES))
)
async def test_one_prebuild_in_every_state(
    module_db_url: str, transition: str, status: str, place: str
) -> None:
    db_url = module_db_url
    with psycopg.connect(db_url) as conn:
        template, workspace = _seed(conn, transition, status, place)
        conn.commit()
    first = await sweep_once(db_url, PlanConfig(), dry_run=False)
    assert _done(first, template) == expected(transition, status, place)
    second = await sweep_once(db_url, PlanConfig(), dry_run=False)
    assert _done(second, template) == {}, "a second sweep must find nothing left to do"

    with psycopg.connect(db_url) as conn:
        builds = conn.execute(
            "SELECT count(*) FROM workspace_builds WHERE workspace_id = %s", (workspace,)
        ).fetchone()
    touched = expected(transition, status, place).keys() & {"delete", "cancel"}
    assert builds == ((2,) if touched else (1,)), "only deletes and cancels add a build"


async def test_two_presets_of_one_version_are_independent(module_db_url: str) -> None:
    with psycopg.connect(module_db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        full = make_preset(conn, tpl.version_id, desired=1)
        make_prebuild(conn, full)
        empty = make_preset(conn, tpl.version_id, desired=2)
        conn.commit()
    outcomes = await sweep_once(module_db_url, PlanConfig(), dry_run=False)
    created = {r.preset_id: len(r.created) for r in _results(outcomes, tpl.id)}
    assert created == {empty: 2}


async def test_pause_blocks_every_write_and_resume_restores(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        make_preset(conn, tpl.version_id, desired=2)
        set_paused(conn, True)
        conn.commit()
    paused = await sweep_once(db_url, PlanConfig(), dry_run=False)
    assert all(o.paused for o in paused)
    assert _done(paused) == {}
    assert [len(p.actions) for o in paused for p in o.plans] == [1], "still planned, not done"
    with psycopg.connect(db_url) as conn:
        set_paused(conn, False)
        conn.commit()
    assert _done(await sweep_once(db_url, PlanConfig(), dry_run=False)) == {"create": 2}
