"""`prebuildd status` and `reconcile --dry-run` are read-only (issue 10 item 9).

They take no lock anyone could wait for (not a template's, not Coder's lock 7), so replicas
and Coder's loop never see a template busy because an operator looks; they show every
template, and say "busy" where a reconcile holds one right now and when Coder's own loop is in
a cycle (both read from pg_locks).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psycopg
import pytest

from factories import make_org, make_preset, make_template
from prebuildd import store
from prebuildd.cli import EXIT_OK, main
from prebuildd.model import PlanConfig
from prebuildd.queries import query
from prebuildd.reconciler import Cause, Reconciler
from prebuildd.report import BUSY, CODER_LOOP_RUNNING
from prebuildd.trigger import Trigger

Conn = psycopg.Connection[Any]
CODER_LOCK_ID = 7


def _seed(url: str) -> dict[str, UUID]:
    """Templates `held` and `free`, one preset each."""
    ids = {}
    with psycopg.connect(url) as conn:
        org = make_org(conn)
        for name in ("held", "free"):
            tpl = make_template(conn, org, name=name)
            make_preset(conn, tpl.version_id, name=f"{name}-preset", desired=2)
            ids[name] = tpl.id
        conn.commit()
    return ids


@pytest.fixture
def replica(db_url: str) -> Iterator[Conn]:
    """Another replica's connection (its reconcile transaction is opened by the test)."""
    with psycopg.connect(db_url) as conn:
        yield conn
        conn.rollback()


def _run(url: str, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert main([args[0], "--database-url", url, "--log-level", "warning", *args[1:]]) == EXIT_OK
    return capsys.readouterr().out


def _rows(out: str) -> dict[str, dict[str, str]]:
    """The status table, by template."""
    lines = out.splitlines()
    header = lines[0].split()
    rows = {}
    for line in lines[1:]:
        if not line.strip():
            break
        row = dict(zip(header, line.split(), strict=True))
        rows[row["TEMPLATE"]] = row
    return rows


def test_templates_a_replica_holds_are_shown_busy_not_dropped(
    db_url: str, replica: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = _seed(db_url)
    # A replica is reconciling `held`: it holds the template's lock (and lock 7 shared).
    held = replica.execute(query("lock_templates"), {"template_ids": [ids["held"]]}).fetchall()
    assert held == [(ids["held"],)]

    rows = _rows(_run(db_url, capsys, "status"))
    assert set(rows) == {"held", "free"}, "every template is shown, the held one too"
    assert rows["held"]["BUSY"] == BUSY
    assert rows["free"]["BUSY"] == "-"
    assert rows["held"]["DESIRED"] == "2"

    out = _run(db_url, capsys, "reconcile", "--once", "--dry-run")
    assert "would: create 2 prebuild(s)" in out
    plans = out.split("\n\nheld / ")[1]
    assert plans.startswith("v") and f"  {BUSY}: being reconciled right now" in plans
    assert CODER_LOOP_RUNNING not in out, "prebuildd's shared hold of lock 7 is not Coder's loop"


def test_a_running_coder_cycle_is_reported_and_hides_nothing(
    db_url: str, replica: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed(db_url)
    # Coder's cycle: TryAcquireLock(LockIDReconcilePrebuilds), exclusive, in its transaction.
    got = replica.execute("SELECT pg_try_advisory_xact_lock(%s::bigint)", (CODER_LOCK_ID,))
    assert got.fetchone() == (True,)

    out = _run(db_url, capsys, "status")
    rows = _rows(out)
    assert set(rows) == {"held", "free"}
    assert all(row["BUSY"] == "-" for row in rows.values())
    assert CODER_LOOP_RUNNING in out
    assert CODER_LOOP_RUNNING in _run(db_url, capsys, "reconcile", "--once", "--dry-run")


@pytest.mark.anyio
async def test_a_dry_run_takes_no_lock_anyone_could_wait_for(db_url: str) -> None:
    """While a dry run's transaction is still open, Coder's loop can take lock 7 exclusively
    and a replica can lock every template: the dry run holds no advisory lock at all."""
    ids = list(_seed(db_url).values())
    async with await psycopg.AsyncConnection.connect(db_url) as looker:
        # Keep the reconcile's transaction open afterwards: it runs in a savepoint of this one,
        # so any transaction-level lock it took would still be held.
        await looker.execute("SELECT 1")
        reconciler = Reconciler(PlanConfig(), dry_run=True)
        outcome = await reconciler.reconcile(looker, ids, Cause(Trigger.CLI))
        assert set(outcome.locked) == set(ids) and len(outcome.plans) == 2

        with psycopg.connect(db_url) as other:
            locks = other.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s",
                (looker.info.backend_pid,),
            ).fetchone()
            assert locks == (0,), "a dry run took an advisory lock"
            coder = other.execute("SELECT pg_try_advisory_xact_lock(%s::bigint)", (CODER_LOCK_ID,))
            assert coder.fetchone() == (True,), "Coder's loop would have skipped its cycle"
            other.rollback()
        async with await psycopg.AsyncConnection.connect(db_url) as replica:
            assert await store.lock_templates(replica, ids) == ids
            await replica.rollback()
        await looker.rollback()
    assert outcome.reconciling == () and not outcome.coder_reconciling


@pytest.mark.anyio
async def test_a_dry_run_cannot_write(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its transaction is READ ONLY: even a write slipped into it would fail, not commit."""
    ids = list(_seed(db_url).values())
    real = store.read_snapshot

    async def then_try_to_write(conn: Any, *args: Any, **kwargs: Any) -> Any:
        snapshot = await real(conn, *args, **kwargs)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            async with conn.transaction():
                await conn.execute(query("set_reconciliation_paused"), {"paused": True})
        return snapshot

    monkeypatch.setattr(store, "read_snapshot", then_try_to_write)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        outcome = await Reconciler(PlanConfig(), dry_run=True).reconcile(
            conn, ids, Cause(Trigger.CLI)
        )
    assert len(outcome.plans) == 2
