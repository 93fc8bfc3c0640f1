"""The cap on pending prebuild create jobs (`--max-pending-prebuild-jobs`) on a real PostgreSQL.

What is proven here, each by real statements:
* the tag set the cap counts per is the one the created jobs really get;
* the database enforces the cap where the rows are written, under the tag set's lock, and a
  second transaction waits for the first and counts its creates (the two-replica race);
* a reconcile creates up to the cap, holds the rest with a reason, and keeps a line;
* a prebuild job leaving the queue wakes the first template in its tag set's line;
* a big and a small deficit take turns (the real service and the simulated provisioner);
* deletes and cancels are never held; a cap of 0 writes nothing new and takes no lock;
* people's jobs never wait on the throttle's locks and keep their place in Coder's order;
* `status` shows held creates; bad flag values exit 2.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, LiteralString
from uuid import UUID, uuid4

import psycopg
import pytest
from _live import eventually, fast_settings, running_provisioner, running_service
from psycopg.types.json import Jsonb

from factories import (
    UNTAGGED,
    TemplateRef,
    add_build,
    make_job,
    make_org,
    make_prebuild,
    make_preset,
    make_template,
    make_user,
    make_version,
)
from prebuildd.cli import EXIT_OK, EXIT_USAGE, main
from prebuildd.model import PlanConfig
from prebuildd.queries import query
from prebuildd.reconciler import Cause, Outcome, Reconciler
from prebuildd.trigger import Trigger

Conn = psycopg.Connection[Any]

CAP = 3
NOW = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)

# Prebuild create jobs nobody picked up, per organization and tag set (Coder's point of view).
PENDING_BY_TAG_SET: LiteralString = """
SELECT j.organization_id, j.tags::text, count(*)
FROM provisioner_jobs j JOIN workspace_builds b ON b.job_id = j.id
WHERE j.job_status = 'pending' AND j.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'
  AND b.transition = 'start'
GROUP BY 1, 2
"""
CREATED: LiteralString = """
SELECT count(*) FROM workspace_builds b
WHERE b.template_version_preset_id = %s AND b.build_number = 1 AND b.transition = 'start'
  AND b.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'
"""
LINE: LiteralString = """
SELECT preset_id, template_id, held FROM prebuildd.throttle_waits
ORDER BY waiting_since, preset_id
"""
# What a provisioner does when it takes a job: the oldest pending prebuild create of the
# preset first.
PICK_UP: LiteralString = """
UPDATE provisioner_jobs SET started_at = now(), updated_at = now(), worker_id = gen_random_uuid()
WHERE id IN (
    SELECT j.id FROM provisioner_jobs j JOIN workspace_builds b ON b.job_id = j.id
    WHERE j.job_status = 'pending' AND j.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'
      AND b.template_version_preset_id = %s AND b.transition = 'start'
    ORDER BY j.created_at, j.id LIMIT %s
)
"""


def _count(conn: Conn, statement: LiteralString, *params: object) -> int:
    row = conn.execute(statement, params or None).fetchone()
    assert row is not None
    return int(row[0])


def _pending(conn: Conn) -> dict[tuple[UUID, str], int]:
    return {(org, tags): n for org, tags, n in conn.execute(PENDING_BY_TAG_SET).fetchall()}


def _template(conn: Conn, org: UUID, desired: int, **kwargs: Any) -> tuple[TemplateRef, UUID]:
    tpl = make_template(conn, org, **kwargs)
    return tpl, make_preset(conn, tpl.version_id, desired=desired)


def _capped(conn: Conn, preset: UUID, version: UUID, count: int, cap: int) -> list[UUID]:
    rows = conn.execute(
        query("create_prebuilds_capped"),
        {
            "preset_id": preset,
            "template_version_id": version,
            "count": count,
            "now": NOW,
            "trace_metadata": Jsonb({}),
            "workspace_tags": Jsonb({}),
            "max_pending": cap,
        },
    ).fetchall()
    return [r[0] for r in rows]


async def _reconcile(url: str, templates: list[UUID], cap: int, *, dry: bool = False) -> Outcome:
    reconciler = Reconciler(PlanConfig(max_pending_prebuild_jobs=cap), dry_run=dry)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return await reconciler.reconcile(conn, templates, Cause(Trigger.CLI))


def _plan_of(outcome: Outcome, preset: UUID) -> Any:
    (plan,) = [p for p in outcome.plans if p.preset.id == preset]
    return plan


# ---------------------------------------------------------------------------------------------
# The tag set and the database's own enforcement
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "import_tags",
    [
        UNTAGGED,
        {},
        {"scope": "user"},
        {"scope": "organization", "owner": "someone", "gpu": "true"},
        {"scope": "sideways", "zone": "", "arch": "arm64"},
    ],
    ids=["untagged", "empty", "user-scope", "tagged", "odd-scope-and-empty-value"],
)
def test_the_tag_set_counted_is_the_one_the_created_jobs_get(
    conn: Conn, import_tags: dict[str, str]
) -> None:
    tpl, preset = _template(conn, make_org(conn), 1, import_tags=import_tags)
    (workspace,) = _capped(conn, preset, tpl.version_id, 1, 0)
    written = conn.execute(
        "SELECT j.tags FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id"
        " WHERE b.workspace_id = %s",
        (workspace,),
    ).fetchone()
    counted = conn.execute(
        "SELECT organization_id, tags FROM prebuildd.throttle_keys(ARRAY[%s]::uuid[])",
        (tpl.version_id,),
    ).fetchone()
    assert written is not None and counted == (tpl.organization_id, written[0])
    assert _count(conn, "SELECT prebuildd.pending_prebuild_creates(%s, %s)", counted[0],
                  Jsonb(counted[1])) == 1


def test_the_database_never_creates_beyond_the_cap_and_counts_only_prebuild_creates(
    conn: Conn,
) -> None:
    org = make_org(conn)
    tpl, preset = _template(conn, org, 10)
    user = make_user(conn)
    # Pending jobs that must not count: a person's build, a prebuild's delete, a prebuild
    # create in another organization, one with another tag set, and a create already running.
    make_job(conn, organization_id=org, initiator_id=user, status="pending")
    doomed = make_prebuild(conn, preset)
    add_build(conn, doomed.workspace_id, transition="delete", job_status="pending")
    _, elsewhere = _template(conn, make_org(conn), 1)
    make_prebuild(conn, elsewhere, job_status="pending")
    gpu_tpl, gpu = _template(conn, org, 1, import_tags={"gpu": "true"})
    assert len(_capped(conn, gpu, gpu_tpl.version_id, 1, 0)) == 1
    make_prebuild(conn, preset, job_status="running")

    assert len(_capped(conn, preset, tpl.version_id, 10, CAP)) == CAP
    assert _capped(conn, preset, tpl.version_id, 10, CAP) == []
    conn.execute(PICK_UP, (preset, 1))
    assert len(_capped(conn, preset, tpl.version_id, 10, CAP)) == 1
    untagged = [n for (o, tags), n in _pending(conn).items() if o == org and '"gpu"' not in tags]
    assert untagged == [CAP]
    # Without a cap it is exactly create_prebuilds.
    assert len(_capped(conn, preset, tpl.version_id, 4, 0)) == 4


def test_a_second_transaction_waits_for_the_first_and_counts_its_creates(db_url: str) -> None:
    """The race of two replicas that both see room: the second waits, then sees none."""
    with psycopg.connect(db_url) as conn:
        tpl, preset = _template(conn, make_org(conn), 10)
        conn.commit()
    first = psycopg.connect(db_url)
    try:
        lines = first.execute(
            query("throttle_lines"),
            {"version_ids": [tpl.version_id], "create_tags": Jsonb([{}]),
             "template_ids": [tpl.id], "take_locks": True},
        ).fetchall()
        assert [r[0] for r in lines].count("key") == 1
        assert len(_capped(first, preset, tpl.version_id, 2, CAP)) == 2
        result: list[int] = []

        def second() -> None:
            with psycopg.connect(db_url) as conn:
                result.append(len(_capped(conn, preset, tpl.version_id, CAP, CAP)))
                conn.commit()

        racer = threading.Thread(target=second)
        racer.start()
        with psycopg.connect(db_url, autocommit=True) as watcher:
            _wait_until(lambda: _count(watcher, WAITING_ON_THROTTLE) == 1)
        assert result == [], "the second transaction must wait for the first one's lock"
        first.commit()
        racer.join(timeout=10)
        assert result == [1], "after the first committed 2, room for 1 is left"
    finally:
        first.close()
    with psycopg.connect(db_url) as conn:
        assert list(_pending(conn).values()) == [CAP]


WAITING_ON_THROTTLE: LiteralString = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND NOT granted AND classid = 1346524232
"""


def _wait_until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition still false"
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# Reconciles
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_reconcile_creates_up_to_the_cap_holds_the_rest_and_says_why(
    db_url: str,
) -> None:
    with psycopg.connect(db_url) as conn:
        tpl, preset = _template(conn, make_org(conn), 10)
        conn.commit()
    outcome = await _reconcile(db_url, [tpl.id], CAP)
    plan = _plan_of(outcome, preset)
    assert (plan.state.to_create, plan.state.held) == (CAP, 7)
    assert any("pending prebuild jobs at the cap" in r for r in plan.reasons)
    with psycopg.connect(db_url) as conn:
        assert _count(conn, CREATED, preset) == CAP
        assert conn.execute(LINE).fetchall() == [(preset, tpl.id, 7)]
    # At the cap: nothing more, the preset keeps waiting.
    outcome = await _reconcile(db_url, [tpl.id], CAP)
    assert _plan_of(outcome, preset).state.held == 7
    with psycopg.connect(db_url) as conn:
        assert _count(conn, CREATED, preset) == CAP
        conn.execute(PICK_UP, (preset, 2))
        conn.commit()
    outcome = await _reconcile(db_url, [tpl.id], CAP)
    assert _plan_of(outcome, preset).state.held == 5
    with psycopg.connect(db_url) as conn:
        assert _count(conn, CREATED, preset) == CAP + 2
        assert conn.execute(LINE).fetchall() == [(preset, tpl.id, 5)]
    # A dry run shows the same and writes nothing, takes no lock.
    dry = await _reconcile(db_url, [tpl.id], CAP, dry=True)
    assert _plan_of(dry, preset).state.held == 5


@pytest.mark.anyio
async def test_without_a_cap_nothing_is_held_and_no_line_is_kept(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        tpl, preset = _template(conn, make_org(conn), 10)
        conn.commit()
    outcome = await _reconcile(db_url, [tpl.id], 0)
    plan = _plan_of(outcome, preset)
    assert (plan.state.to_create, plan.state.held) == (10, 0)
    assert not any("cap" in r for r in plan.reasons)
    with psycopg.connect(db_url) as conn:
        assert _count(conn, CREATED, preset) == 10
        assert conn.execute(LINE).fetchall() == []


@pytest.mark.anyio
async def test_deletes_and_cancels_are_never_held(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        org = make_org(conn)
        full, filler = _template(conn, org, CAP + 2)
        # Same organization and tag set: a retired version's queued create to cancel, and a
        # surplus on the active version to delete.
        tpl = make_template(conn, org)
        old = make_preset(conn, tpl.version_id, desired=1)
        make_prebuild(conn, old, job_status="pending")
        current = make_version(conn, tpl.id, active=True)
        surplus = make_preset(conn, current, desired=0)
        running = [make_prebuild(conn, surplus) for _ in range(2)]
        conn.commit()
    first = await _reconcile(db_url, [full.id], CAP)
    # The retired version's queued create counts: room for CAP - 1 of the CAP + 2 wanted.
    assert _plan_of(first, filler).state.held == 3, "the tag set is at the cap"
    outcome = await _reconcile(db_url, [tpl.id], CAP)
    assert sorted(str(r.kind) for r in outcome.results) == ["cancel_pending", "delete"]
    assert sum(len(r.deleted) for r in outcome.results) == 3  # 1 retired + 2 deleted
    with psycopg.connect(db_url) as conn:
        deleting = _count(
            conn,
            "SELECT count(*) FROM workspace_builds WHERE transition = 'delete'"
            " AND workspace_id = ANY(%s)",
            [r.workspace_id for r in running],
        )
        assert deleting == 2
        assert _count(conn, "SELECT count(*) FROM provisioner_jobs WHERE job_status = 'canceled'")
        assert _count(conn, CREATED, filler) == CAP - 1
    # The cancel made room: the next reconcile of the full template creates one more.
    again = await _reconcile(db_url, [full.id], CAP)
    assert _plan_of(again, filler).state.to_create == 1


@pytest.mark.anyio
async def test_a_job_leaving_the_queue_wakes_the_first_in_its_line(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        org = make_org(conn)
        first, first_preset = _template(conn, org, 5)
        second, _ = _template(conn, org, 5)
        other_org, _ = _template(conn, make_org(conn), 5)
        user = make_user(conn)
        users_job = make_job(conn, organization_id=org, initiator_id=user, status="pending")
        conn.commit()
    await _reconcile(db_url, [first.id], CAP)  # creates 3, first waits
    await _reconcile(db_url, [second.id], CAP)  # at the cap: second waits behind first
    await _reconcile(db_url, [other_org.id], CAP)  # another organization: its own line
    with psycopg.connect(db_url) as conn:
        assert [row[1] for row in conn.execute(LINE).fetchall()][:2] == [first.id, second.id]
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN prebuildd_events")
        with psycopg.connect(db_url) as conn:
            conn.execute(
                "UPDATE provisioner_jobs SET started_at = now(), worker_id = gen_random_uuid()"
                " WHERE id = %s",
                (users_job,),
            )
            conn.commit()
        assert _throttle_turns(listener) == [], "a person's job frees no room"
        with psycopg.connect(db_url) as conn:
            conn.execute(PICK_UP, (first_preset, 1))
            conn.commit()
        assert _throttle_turns(listener) == [str(first.id)]
    outcome = await _reconcile(db_url, [first.id], CAP)
    assert _plan_of(outcome, first_preset).state.to_create == 1


def _throttle_turns(listener: Conn) -> list[str]:
    turns = []
    for note in listener.notifies(timeout=0.5, stop_after=None):
        payload = json.loads(note.payload)
        if payload["k"] == "throttle_turn":
            turns.append(payload["t"])
    return turns


@pytest.mark.anyio
async def test_a_reconcile_wakes_templates_it_dealt_room_to(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        org = make_org(conn)
        first, first_preset = _template(conn, org, 4)
        second, _ = _template(conn, org, 4)
        conn.commit()
    await _reconcile(db_url, [first.id], CAP)
    await _reconcile(db_url, [second.id], CAP)
    with psycopg.connect(db_url) as conn:
        conn.execute(PICK_UP, (first_preset, CAP))
        conn.commit()
    # first is served and goes to the back; second was next, and is woken.
    outcome = await _reconcile(db_url, [first.id], CAP)
    assert outcome.wake == (second.id,)


# ---------------------------------------------------------------------------------------------
# The real service: a big and a small deficit take turns
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_small_template_is_served_while_a_big_one_still_waits(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        org = make_org(conn)
        big_tpl, big = _template(conn, org, 24, name="big")
        small_tpl, small = _template(conn, org, 0, name="small")
        conn.commit()
    settings = fast_settings(plan=PlanConfig(max_pending_prebuild_jobs=2))
    async with running_service(db_url, settings) as service:
        # No provisioner yet: big fills the queue to the cap and waits for the rest.
        await eventually(lambda: _async_count(db_url, CREATED, big, 2), timeout=15)
        with psycopg.connect(db_url) as conn:
            conn.execute(
                "UPDATE template_version_presets SET desired_instances = 3 WHERE id = %s",
                (small,),
            )
            conn.commit()
        await eventually(lambda: _in_line(db_url, small), timeout=15)
        async with running_provisioner(db_url, build_time=0.1, concurrency=1):
            await eventually(lambda: _async_count(db_url, CREATED, small, 3), timeout=30)
            with psycopg.connect(db_url) as conn:
                big_so_far = _count(conn, CREATED, big)
            # First come first served would have made it 24 before small got one; taking
            # turns, about one each (5 in practice: 2 before small asked, then 3 turns).
            assert big_so_far <= 2 + 3 + 2, big_so_far
            await eventually(lambda: _async_count(db_url, CREATED, big, 24), timeout=90)
        turns = service.metrics.events_received.labels("throttle_turn")._value.get()
        assert turns > 0, "pickups must wake the line"
    with psycopg.connect(db_url) as conn:
        assert conn.execute(LINE).fetchall() == []
        assert big_tpl.id != small_tpl.id


async def _async_count(url: str, statement: LiteralString, preset: UUID, expected: int) -> bool:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(statement, (preset,))
        row = await cur.fetchone()
    return row is not None and int(row[0]) >= expected


async def _in_line(url: str, preset: UUID) -> bool:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM prebuildd.throttle_waits WHERE preset_id = %s", (preset,)
        )
        row = await cur.fetchone()
    return row == (1,)


# ---------------------------------------------------------------------------------------------
# People's jobs
# ---------------------------------------------------------------------------------------------


def test_people_jobs_never_wait_on_the_throttle_and_go_first(db_url: str) -> None:
    """While a reconcile holds a tag set's lock (transaction open, creates written), a
    provisioner acquires a person's job queued after every prebuild job, without waiting."""
    with psycopg.connect(db_url) as conn:
        org = make_org(conn)
        tpl, preset = _template(conn, org, 10)
        for _ in range(CAP):
            make_prebuild(conn, preset, job_status="pending")
        conn.commit()
    holder = psycopg.connect(db_url)
    try:
        holder.execute(
            query("throttle_lines"),
            {"version_ids": [tpl.version_id], "create_tags": Jsonb([{}]),
             "template_ids": [tpl.id], "take_locks": True},
        )
        _capped(holder, preset, tpl.version_id, 1, CAP + 1)
        with psycopg.connect(db_url) as conn:
            person = make_user(conn)
            users_job = make_job(conn, organization_id=org, initiator_id=person, status="pending")
            conn.commit()
        with psycopg.connect(db_url, autocommit=True) as provisioner:
            provisioner.execute("SET lock_timeout = '200ms'")
            row = provisioner.execute(
                query("provisioner_acquire_job"), {"now": NOW, "worker_id": uuid4()}
            ).fetchone()
            assert row is not None and row[0] == users_job
            # And the prebuild jobs can be taken too: nothing of theirs is locked.
            row = provisioner.execute(
                query("provisioner_acquire_job"), {"now": NOW, "worker_id": uuid4()}
            ).fetchone()
            assert row is not None
    finally:
        holder.rollback()
        holder.close()


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


def test_status_shows_held_creates(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with psycopg.connect(db_url) as conn:
        _template(conn, make_org(conn), 5, name="held")
        conn.commit()
    args = ["--database-url", db_url, "--log-level", "warning"]
    assert main(["reconcile", "--once", "--max-pending-prebuild-jobs", "2", *args]) == EXIT_OK
    capsys.readouterr()
    assert main(["status", "--max-pending-prebuild-jobs", "2", *args]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    row = dict(zip(lines[0].split(), lines[1].split(), strict=False))
    assert (row["DESIRED"], row["STARTING"], row["HELD"]) == ("5", "2", "3")
    assert any("HELD" in line and "--max-pending-prebuild-jobs" in line for line in lines[2:])


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["run", "--max-pending-prebuild-jobs", "-1"], {}, "must be >= 0"),
        (["reconcile", "--max-pending-prebuild-jobs", "many"], {}, "invalid int value"),
        (["status", "--max-pending-prebuild-jobs", "2.5"], {}, "invalid int value"),
        (["run"], {"PREBUILDD_MAX_PENDING_PREBUILD_JOBS": "-3"}, "must be >= 0"),
        (["status"], {"PREBUILDD_MAX_PENDING_PREBUILD_JOBS": "x"}, "invalid int value"),
    ],
)
def test_bad_cap_values_exit_2_and_write_nothing(
    db_url: str,
    args: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with psycopg.connect(db_url) as conn:
        _template(conn, make_org(conn), 2)
        conn.commit()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(main([*args, "--database-url", db_url, "--no-migrate"]
                              if args[0] == "run" else [*args, "--database-url", db_url]))
    assert exited.value.code == EXIT_USAGE
    assert message in capsys.readouterr().err
    with psycopg.connect(db_url) as conn:
        assert _count(conn, "SELECT count(*) FROM workspace_builds") == 0


def test_the_cap_of_a_setting_reaches_the_planner() -> None:
    from prebuildd.cli import build_parser
    from prebuildd.config import settings_from

    args = build_parser().parse_args(["run", "--max-pending-prebuild-jobs", "7"])
    assert settings_from(args).plan.max_pending_prebuild_jobs == 7
    default = build_parser().parse_args(["run"])
    assert settings_from(default).plan == replace(PlanConfig(), max_pending_prebuild_jobs=0)
