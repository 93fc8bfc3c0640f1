"""The CLI's sweep (`sweep.sweep_once`) in lanes: every batch once, outcomes in batch order, the
same plans as one lane, and a database error raised as itself (the CLI prints it), not as a
task group's."""

from __future__ import annotations

from uuid import UUID

import psycopg
import pytest

from factories import make_org, make_prebuild, make_preset, make_template
from prebuildd.model import Plan, PlanConfig
from prebuildd.queue import WorkQueue
from prebuildd.reconciler import Cause, Outcome, Reconciler
from prebuildd.sweep import Sweeper, Swept, sweep_once
from prebuildd.trigger import Trigger

pytestmark = pytest.mark.anyio


def _seed(db_url: str, templates: int) -> list[UUID]:
    with psycopg.connect(db_url) as conn:
        org = make_org(conn)
        ids = []
        for n in range(templates):
            tpl = make_template(conn, org)
            preset = make_preset(conn, tpl.version_id, desired=1 + n % 3)
            make_prebuild(conn, preset)
            ids.append(tpl.id)
        conn.commit()
    return sorted(ids)


def _decisions(outcomes: list[Outcome]) -> list[tuple[object, ...]]:
    return [_decision(p) for o in outcomes for p in o.plans]


def _decision(plan: Plan) -> tuple[object, ...]:
    return (plan.preset, plan.state, plan.actions, plan.reasons)


async def test_lanes_cover_every_batch_once_in_order(db_url: str) -> None:
    ids = _seed(db_url, 7)
    one = await sweep_once(db_url, PlanConfig(), dry_run=True, batch=2, lanes=1)
    three = await sweep_once(db_url, PlanConfig(), dry_run=True, batch=2, lanes=3)
    expected = [tuple(ids[i : i + 2]) for i in range(0, len(ids), 2)]
    assert [o.locked for o in one] == expected
    assert [o.locked for o in three] == expected
    assert _decisions(three) == _decisions(one)


async def test_real_sweep_in_lanes_acts_once(db_url: str) -> None:
    _seed(db_url, 5)
    first = await sweep_once(db_url, PlanConfig(), dry_run=False, batch=1, lanes=2)
    created = sum(len(r.created) for o in first for r in o.results)
    assert created == (1 - 1) + (2 - 1) + (3 - 1) + (1 - 1) + (2 - 1)
    second = await sweep_once(db_url, PlanConfig(), dry_run=False, batch=1, lanes=2)
    assert [r for o in second for r in o.results] == []


async def test_a_failing_lane_raises_the_database_error(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _seed(db_url, 4)
    real = Reconciler.reconcile

    async def failing(
        self: Reconciler, conn: psycopg.AsyncConnection[object], chunk: list[UUID], cause: Cause
    ) -> Outcome:
        if ids[2] in chunk:
            raise psycopg.OperationalError("connection lost")
        return await real(self, conn, chunk, cause)

    monkeypatch.setattr(Reconciler, "reconcile", failing)
    with pytest.raises(psycopg.OperationalError, match="connection lost"):
        await sweep_once(db_url, PlanConfig(), dry_run=True, batch=1, lanes=2)


async def test_a_sweep_queues_every_template_with_its_trigger(db_url: str) -> None:
    ids = _seed(db_url, 3)
    queue: WorkQueue[UUID] = WorkQueue(settle=0.0)
    queue.add(ids[0], trigger=Trigger.EVENT, event_at=1.0)  # already queued: coalesces
    sweeper = Sweeper(queue)
    seen: list[Swept] = []
    sweeper.on_sweep.append(seen.append)
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        swept = await sweeper.sweep(conn, Trigger.STARTUP)
    assert set(ids) <= set(swept.templates)
    assert seen == [swept] and swept.trigger is Trigger.STARTUP
    assert swept.started <= swept.listed
    work = queue.get_nowait(len(swept.templates))
    assert work is not None and set(work.keys) == set(swept.templates)
    assert work.meta[ids[0]].triggers == {Trigger.EVENT, Trigger.STARTUP}
    assert work.meta[ids[0]].event_at == 1.0
    assert all(work.meta[t].triggers == {Trigger.STARTUP} for t in ids[1:])
