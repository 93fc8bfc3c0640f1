"""Claiming a prebuild inside the caller's transaction, against a real PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString
from uuid import UUID

import psycopg
import pytest
from psycopg.rows import dict_row

import factories as f
from _notify import Listening
from prebuildd.claim import (
    Claimed,
    InvalidClaim,
    InvalidWorkspaceName,
    UnknownUser,
    WorkspaceNameTaken,
    claim,
    claim_async,
)
from prebuildd.model import PREBUILDS_USER_ID

Conn = psycopg.Connection[Any]
NOW = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)
PARAMS = {"region": "eu", "size": "large"}
IMPORT_TAGS = {"scope": "organization", "owner": "", "pool": "eu"}


@pytest.fixture
def listener(db_url: str) -> Iterator[Listening]:
    """An autocommit connection listening where Coder's provisioners listen."""
    listening = Listening.open(db_url, "provisioner_job_posted")
    try:
        yield listening
    finally:
        listening.close()


def received(listener: Listening) -> list[dict[str, Any]]:
    """Every wake-up posted (committed) so far; [] means none was (tests/_notify.py)."""
    return [json.loads(payload) for payload in listener.received()]


def one(conn: Conn, sql: LiteralString, *args: object) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, args)
        row = cur.fetchone()
    assert row is not None
    return row


def scalar(conn: Conn, sql: LiteralString, *args: object) -> Any:
    row = conn.execute(sql, args).fetchone()
    assert row is not None
    return row[0]


def setup_preset(conn: Conn, *, default_ttl: int = 3_600_000_000_000) -> tuple[f.TemplateRef, UUID]:
    tpl = f.make_template(conn, f.make_org(conn), import_tags=IMPORT_TAGS)
    conn.execute("UPDATE templates SET default_ttl = %s WHERE id = %s", (default_ttl, tpl.id))
    return tpl, f.make_preset(conn, tpl.version_id, parameters=PARAMS)


def owner_of(conn: Conn, workspace_id: UUID) -> UUID:
    owner: UUID = scalar(conn, "SELECT owner_id FROM workspaces WHERE id = %s", workspace_id)
    return owner


# ---------------------------------------------------------------------------------------------
# Happy path
# ---------------------------------------------------------------------------------------------


def test_claim_hands_over_the_workspace_and_queues_the_users_start_build(
    conn: Conn, listener: Listening
) -> None:
    tpl, preset_id = setup_preset(conn)
    prebuild = f.make_prebuild(conn, preset_id)
    # Fields a prebuild should never carry; the claim must leave a clean lifecycle state.
    conn.execute(
        "UPDATE workspaces SET dormant_at = now(), deleting_at = now(),"
        " autostart_schedule = 'CRON_TZ=UTC 0 9 * * 1-5', next_start_at = now() WHERE id = %s",
        (prebuild.workspace_id,),
    )
    conn.execute(
        "UPDATE workspace_builds SET provisioner_state = 'state' WHERE id = %s",
        (prebuild.build_id,),
    )
    user_id = f.make_user(conn)
    conn.commit()

    result = claim(conn, preset_id=preset_id, user_id=user_id, name="my-ws", now=NOW)

    assert isinstance(result, Claimed)
    assert result.workspace_id == prebuild.workspace_id
    assert result.name == "my-ws"
    assert received(listener) == [], "the notification must wait for the commit"
    conn.commit()

    ws = one(conn, "SELECT * FROM workspaces WHERE id = %s", prebuild.workspace_id)
    assert ws["owner_id"] == user_id
    assert ws["name"] == "my-ws"
    assert ws["updated_at"] == NOW
    assert ws["last_used_at"] == NOW
    assert ws["dormant_at"] is None
    assert ws["deleting_at"] is None
    assert ws["autostart_schedule"] is None
    assert ws["next_start_at"] is None
    assert ws["ttl"] == 3_600_000_000_000
    assert ws["deleted"] is False
    assert ws["template_id"] == tpl.id

    build = one(conn, "SELECT * FROM workspace_builds WHERE id = %s", result.build_id)
    assert build["workspace_id"] == prebuild.workspace_id
    assert build["build_number"] == prebuild.build_number + 1
    assert build["transition"] == "start"
    assert build["initiator_id"] == user_id
    assert build["reason"] == "initiator"
    assert build["template_version_id"] == tpl.version_id
    assert build["template_version_preset_id"] == preset_id
    assert build["job_id"] == result.job_id
    assert build["provisioner_state"] == b"state"
    assert build["created_at"] == NOW
    assert build["updated_at"] == NOW
    assert build["deadline"] == ZERO_TIME
    assert build["max_deadline"] == ZERO_TIME
    assert build["daily_cost"] == 0

    job = one(conn, "SELECT * FROM provisioner_jobs WHERE id = %s", result.job_id)
    import_job = one(conn, "SELECT * FROM provisioner_jobs WHERE id = %s", tpl.import_job_id)
    assert job["job_status"] == "pending"
    assert job["type"] == "workspace_build"
    assert job["initiator_id"] == user_id
    assert job["created_at"] == NOW
    assert job["updated_at"] == NOW
    assert job["started_at"] is None
    assert job["completed_at"] is None
    assert job["canceled_at"] is None
    assert job["worker_id"] is None
    assert job["error"] is None
    assert job["input"]["workspace_build_id"] == str(result.build_id)
    assert job["input"]["prebuilt_workspace_stage"] == 2
    for column in ("organization_id", "provisioner", "storage_method", "file_id", "tags"):
        assert job[column] == import_job[column], column

    params = conn.execute(
        "SELECT name, value FROM workspace_build_parameters WHERE workspace_build_id = %s",
        (result.build_id,),
    ).fetchall()
    assert dict(params) == PARAMS

    assert received(listener) == [
        {"organization_id": str(tpl.organization_id), "type": "terraform", "tags": IMPORT_TAGS}
    ]


def test_a_user_scoped_claim_job_is_owned_by_the_claiming_user(conn: Conn) -> None:
    admin = f.make_user(conn)
    tags = {"scope": "user", "owner": str(admin), "gpu": "yes"}
    tpl = f.make_template(conn, f.make_org(conn), created_by=admin, import_tags=tags)
    preset_id = f.make_preset(conn, tpl.version_id)
    f.make_prebuild(conn, preset_id)
    user_id = f.make_user(conn)

    result = claim(conn, preset_id=preset_id, user_id=user_id, name="ws")

    assert result is not None
    job = one(conn, "SELECT tags FROM provisioner_jobs WHERE id = %s", result.job_id)
    assert job["tags"] == {"scope": "user", "owner": str(user_id), "gpu": "yes"}


def test_claim_without_template_default_ttl_leaves_ttl_unset(conn: Conn) -> None:
    _, preset_id = setup_preset(conn, default_ttl=0)
    prebuild = f.make_prebuild(conn, preset_id)
    user_id = f.make_user(conn)

    assert claim(conn, preset_id=preset_id, user_id=user_id, name="ws") is not None

    assert scalar(conn, "SELECT ttl FROM workspaces WHERE id = %s", prebuild.workspace_id) is None


def test_the_oldest_eligible_prebuild_is_claimed_first(conn: Conn) -> None:
    _, preset_id = setup_preset(conn)
    young = f.make_prebuild(conn, preset_id, created_at=NOW - timedelta(minutes=5))
    old = f.make_prebuild(conn, preset_id, created_at=NOW - timedelta(hours=5))
    user_id = f.make_user(conn)

    first = claim(conn, preset_id=preset_id, user_id=user_id, name="first")
    second = claim(conn, preset_id=preset_id, user_id=user_id, name="second")

    assert first is not None and first.workspace_id == old.workspace_id
    assert second is not None and second.workspace_id == young.workspace_id
    assert claim(conn, preset_id=preset_id, user_id=user_id, name="third") is None


@pytest.mark.anyio
async def test_async_twin_claims_the_same_way(db_url: str) -> None:
    with psycopg.connect(db_url) as sconn:
        _, preset_id = setup_preset(sconn)
        prebuild = f.make_prebuild(sconn, preset_id)
        user_id = f.make_user(sconn)
    async with await psycopg.AsyncConnection.connect(db_url) as aconn:
        result = await claim_async(aconn, preset_id=preset_id, user_id=user_id, name="async-ws")
        assert result is not None and result.workspace_id == prebuild.workspace_id
        assert await claim_async(aconn, preset_id=preset_id, user_id=user_id, name="b") is None


# ---------------------------------------------------------------------------------------------
# Nothing eligible
# ---------------------------------------------------------------------------------------------


def test_no_prebuild_returns_none_and_writes_nothing(
    conn: Conn, listener: Listening
) -> None:
    _, preset_id = setup_preset(conn)
    user_id = f.make_user(conn)
    conn.commit()

    assert claim(conn, preset_id=preset_id, user_id=user_id, name="ws") is None
    conn.commit()

    assert scalar(conn, "SELECT count(*) FROM workspace_builds") == 0
    assert scalar(conn, "SELECT count(*) FROM workspaces WHERE owner_id = %s", user_id) == 0
    assert received(listener) == []


def test_unknown_preset_returns_none(conn: Conn) -> None:
    _, preset_id = setup_preset(conn)
    f.make_prebuild(conn, preset_id)
    user_id = f.make_user(conn)

    assert claim(conn, preset_id=user_id, user_id=user_id, name="ws") is None


Spoiler = Callable[[Conn, f.TemplateRef, UUID], UUID]


def _agent_starting(conn: Conn, tpl: f.TemplateRef, preset_id: UUID) -> UUID:
    prebuild = f.make_prebuild(conn, preset_id)
    f.add_agent(conn, prebuild.job_id, lifecycle="starting")
    return prebuild.workspace_id


def _no_agents(conn: Conn, tpl: f.TemplateRef, preset_id: UUID) -> UUID:
    return f.make_prebuild(conn, preset_id, agents=0).workspace_id


def _job(status: str) -> Spoiler:
    def spoil(conn: Conn, tpl: f.TemplateRef, preset_id: UUID) -> UUID:
        return f.make_prebuild(conn, preset_id, job_status=status).workspace_id

    return spoil


def _next_build(transition: str, status: str) -> Spoiler:
    def spoil(conn: Conn, tpl: f.TemplateRef, preset_id: UUID) -> UUID:
        prebuild = f.make_prebuild(conn, preset_id)
        f.add_build(conn, prebuild.workspace_id, transition=transition, job_status=status)
        return prebuild.workspace_id

    return spoil


def _inactive_version(conn: Conn, tpl: f.TemplateRef, preset_id: UUID) -> UUID:
    prebuild = f.make_prebuild(conn, preset_id)
    f.make_version(conn, tpl, active=True)
    return prebuild.workspace_id


def _template_deleted(conn: Conn, tpl: f.TemplateRef, preset_id: UUID) -> UUID:
    prebuild = f.make_prebuild(conn, preset_id)
    conn.execute("UPDATE templates SET deleted = true WHERE id = %s", (tpl.id,))
    return prebuild.workspace_id


def _workspace_deleted(conn: Conn, tpl: f.TemplateRef, preset_id: UUID) -> UUID:
    prebuild = f.make_prebuild(conn, preset_id)
    conn.execute("UPDATE workspaces SET deleted = true WHERE id = %s", (prebuild.workspace_id,))
    return prebuild.workspace_id


def _other_preset(conn: Conn, tpl: f.TemplateRef, preset_id: UUID) -> UUID:
    return f.make_prebuild(conn, f.make_preset(conn, tpl.version_id)).workspace_id


def _owned_by_someone(conn: Conn, tpl: f.TemplateRef, preset_id: UUID) -> UUID:
    prebuild = f.make_prebuild(conn, preset_id)
    f.claim(conn, prebuild.workspace_id, f.make_user(conn))
    return prebuild.workspace_id


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(_agent_starting, id="agent-not-ready"),
        pytest.param(_no_agents, id="no-agents"),
        pytest.param(_job("failed"), id="build-failed"),
        pytest.param(_job("running"), id="build-running"),
        pytest.param(_job("pending"), id="build-pending"),
        pytest.param(_job("canceled"), id="build-canceled"),
        pytest.param(_next_build("stop", "succeeded"), id="stopped"),
        pytest.param(_next_build("delete", "pending"), id="delete-queued"),
        pytest.param(_next_build("start", "running"), id="restart-running"),
        pytest.param(_inactive_version, id="inactive-version"),
        pytest.param(_template_deleted, id="template-deleted"),
        pytest.param(_workspace_deleted, id="workspace-deleted"),
        pytest.param(_other_preset, id="other-preset"),
        pytest.param(_owned_by_someone, id="already-claimed"),
    ],
)
def test_ineligible_prebuilds_are_never_claimed(conn: Conn, spoil: Spoiler) -> None:
    tpl, preset_id = setup_preset(conn)
    workspace_id = spoil(conn, tpl, preset_id)
    owner_before = owner_of(conn, workspace_id)
    user_id = f.make_user(conn)

    assert claim(conn, preset_id=preset_id, user_id=user_id, name="ws") is None
    assert owner_of(conn, workspace_id) == owner_before


def test_only_live_top_level_agents_decide_readiness(conn: Conn) -> None:
    _, preset_id = setup_preset(conn)
    prebuild = f.make_prebuild(conn, preset_id, agents=0)
    # A ready agent, a deleted one that never started, and a sub-agent still starting.
    ready = f.add_agent(conn, prebuild.job_id, lifecycle="ready")
    f.add_agent(conn, prebuild.job_id, lifecycle="created", deleted=True)
    f.add_agent(conn, prebuild.job_id, lifecycle="starting", parent=ready)
    user_id = f.make_user(conn)

    result = claim(conn, preset_id=preset_id, user_id=user_id, name="ws")

    assert result is not None and result.workspace_id == prebuild.workspace_id


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


def test_name_taken_is_refused_and_the_transaction_stays_usable(conn: Conn) -> None:
    _, preset_id = setup_preset(conn)
    prebuild = f.make_prebuild(conn, preset_id)
    user_id = f.make_user(conn)
    f.make_prebuild(conn, preset_id, owner=user_id, name="My-Ws")

    with pytest.raises(WorkspaceNameTaken):
        claim(conn, preset_id=preset_id, user_id=user_id, name="my-ws")

    assert owner_of(conn, prebuild.workspace_id) == PREBUILDS_USER_ID
    assert scalar(conn, "SELECT count(*) FROM workspace_builds WHERE build_number > 1") == 0


def test_a_deleted_workspace_does_not_hold_its_name(conn: Conn) -> None:
    _, preset_id = setup_preset(conn)
    f.make_prebuild(conn, preset_id)
    user_id = f.make_user(conn)
    old = f.make_prebuild(conn, preset_id, owner=user_id, name="my-ws")
    conn.execute("UPDATE workspaces SET deleted = true WHERE id = %s", (old.workspace_id,))

    assert claim(conn, preset_id=preset_id, user_id=user_id, name="my-ws") is not None


def test_name_taken_by_a_concurrent_insert_raises_name_taken(db_url: str) -> None:
    with psycopg.connect(db_url) as setup:
        _, preset_id = setup_preset(setup)
        f.make_prebuild(setup, preset_id)
        user_id = f.make_user(setup)
    with psycopg.connect(db_url) as racer, psycopg.connect(db_url) as claimer:
        f.make_prebuild(racer, preset_id, owner=user_id, name="dup")  # not committed yet
        outcome: list[BaseException] = []

        def run() -> None:
            try:
                claim(claimer, preset_id=preset_id, user_id=user_id, name="dup")
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        # The race for certain: the claim waits on the racer's uncommitted index entry.
        _wait_until_blocked(db_url, claimer.info.backend_pid, by=racer.info.backend_pid)
        racer.commit()
        worker.join(timeout=60)
        claimer.rollback()

    assert len(outcome) == 1 and isinstance(outcome[0], WorkspaceNameTaken)


def _wait_until_blocked(url: str, pid: int, *, by: int, timeout: float = 60.0) -> None:
    """Until session `pid` waits for a lock that session `by` holds."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as watcher:
        while time.monotonic() < deadline:
            row = watcher.execute(
                "SELECT %s = ANY(pg_blocking_pids(%s))", (by, pid)
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.01)
    raise AssertionError(f"session {pid} never waited for session {by}")


@pytest.mark.parametrize("name", ["", "-ws", "ws-", "a--b", "has space", "x" * 33, "new", "é"])
def test_invalid_names_are_refused_before_touching_the_database(conn: Conn, name: str) -> None:
    _, preset_id = setup_preset(conn)
    user_id = f.make_user(conn)

    with pytest.raises(InvalidWorkspaceName):
        claim(conn, preset_id=preset_id, user_id=user_id, name=name)


def test_unknown_or_deleted_users_are_refused(conn: Conn) -> None:
    tpl, preset_id = setup_preset(conn)
    prebuild = f.make_prebuild(conn, preset_id)
    deleted_user = f.make_user(conn)
    conn.execute("UPDATE users SET deleted = true WHERE id = %s", (deleted_user,))

    with pytest.raises(UnknownUser):
        claim(conn, preset_id=preset_id, user_id=tpl.id, name="ws")
    with pytest.raises(UnknownUser):
        claim(conn, preset_id=preset_id, user_id=deleted_user, name="ws")
    with pytest.raises(InvalidClaim):
        claim(conn, preset_id=preset_id, user_id=PREBUILDS_USER_ID, name="ws")
    assert owner_of(conn, prebuild.workspace_id) == PREBUILDS_USER_ID


# ---------------------------------------------------------------------------------------------
# Transactions and concurrency
# ---------------------------------------------------------------------------------------------


def test_a_rolled_back_claim_leaves_the_prebuild_unclaimed(
    conn: Conn, listener: Listening
) -> None:
    _, preset_id = setup_preset(conn)
    prebuild = f.make_prebuild(conn, preset_id)
    user_id = f.make_user(conn)
    conn.commit()

    assert claim(conn, preset_id=preset_id, user_id=user_id, name="ws") is not None
    conn.rollback()

    assert owner_of(conn, prebuild.workspace_id) == PREBUILDS_USER_ID
    assert scalar(conn, "SELECT count(*) FROM workspace_builds") == 1
    assert received(listener) == []
    # Still claimable afterwards.
    again = claim(conn, preset_id=preset_id, user_id=user_id, name="ws")
    assert again is not None and again.workspace_id == prebuild.workspace_id


def test_a_locked_candidate_is_skipped_not_waited_for(db_url: str) -> None:
    with psycopg.connect(db_url) as setup:
        _, preset_id = setup_preset(setup)
        first = f.make_prebuild(setup, preset_id, created_at=NOW - timedelta(hours=2))
        second = f.make_prebuild(setup, preset_id, created_at=NOW - timedelta(hours=1))
        alice, bob = f.make_user(setup), f.make_user(setup)
    with psycopg.connect(db_url) as a, psycopg.connect(db_url) as b:
        got_a = claim(a, preset_id=preset_id, user_id=alice, name="ws")  # holds its lock
        b.execute("SET lock_timeout = '2s'")
        got_b = claim(b, preset_id=preset_id, user_id=bob, name="ws")
        got_nothing = claim(b, preset_id=preset_id, user_id=bob, name="ws2")
        a.commit()
        b.commit()

    assert got_a is not None and got_a.workspace_id == first.workspace_id
    assert got_b is not None and got_b.workspace_id == second.workspace_id
    assert got_nothing is None


def test_fifty_concurrent_claims_for_ten_prebuilds_have_exactly_ten_winners(
    db_url: str,
) -> None:
    with psycopg.connect(db_url) as setup:
        _, preset_id = setup_preset(setup)
        prebuilds = {f.make_prebuild(setup, preset_id).workspace_id for _ in range(10)}
        users = [f.make_user(setup) for _ in range(50)]
    barrier = threading.Barrier(len(users))
    results: list[Claimed | None] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def attempt(user_id: UUID) -> None:
        try:
            with psycopg.connect(db_url) as c:
                barrier.wait(timeout=30)
                result = claim(c, preset_id=preset_id, user_id=user_id, name="mine")
                # Hold the lock a moment so that the others really meet it.
                threading.Event().wait(0.05)
                c.commit()
            with lock:
                results.append(result)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert errors == []
    winners = [r for r in results if r is not None]
    assert len(winners) == 10
    assert {w.workspace_id for w in winners} == prebuilds
    assert results.count(None) == 40
    with psycopg.connect(db_url) as check:
        assert (
            scalar(check, "SELECT count(*) FROM workspaces WHERE owner_id = %s", PREBUILDS_USER_ID)
            == 0
        )
        assert scalar(check, "SELECT count(*) FROM workspace_builds WHERE build_number = 2") == 10
        assert (
            scalar(
                check,
                "SELECT count(DISTINCT owner_id) FROM workspaces WHERE id = ANY(%s)",
                list(prebuilds),
            )
            == 10
        )
