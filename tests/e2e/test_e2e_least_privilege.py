"""`prebuildd run` as an operator deploys it: a process connected as a login role whose only
rights are those deploy/sql/prebuildd-role.sql gives `prebuildd`, started with --no-migrate
(migrations are the owner's job). Coder's side -- the provisioner, the claim, the promotion --
runs as the owner, as Coder would.

The service must do its whole job as the role, driven by events (the periodic sweep is an
hour away): fill a pool, replace a claimed prebuild, move a promotion over, store a preset's
hard limit and notify its admins, obey `prebuildd pause` / `resume` run as the role too; and
log no error, no privilege problem. Every session it opens is the role's.

Like tests/integration/test_least_privilege.py this needs a superuser test server (it
creates roles and changes privileges): the embedded one is. On another server the module
fails; outside CI it may be skipped explicitly with PREBUILDD_TEST_SKIP_ROLE_TESTS=1.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest
from _db import assert_integrity, eligible, pools, scalar
from _procs import Processes, error_records, eventually, reconciled, run_cli, scrape, wait_ready
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from _ci import under_ci
from factories import (
    ago,
    make_org,
    make_prebuild,
    make_preset,
    make_template,
    make_user,
    make_version,
    promote,
)
from prebuildd.claim import claim

pytestmark = pytest.mark.slow

ROLE_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "sql" / "prebuildd-role.sql"
ROLE = "prebuildd"
SKIP_VARIABLE = "PREBUILDD_TEST_SKIP_ROLE_TESTS"
WAIT = 60.0


@pytest.fixture
def superuser_db_url(db_url: str) -> str:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if row and row[0]:
        return db_url
    reason = (
        "the service-as-the-role drill needs a superuser test server to create roles "
        "(PREBUILDD_TEST_DATABASE_URL is not one)"
    )
    if not under_ci() and os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"{reason}; skipped because {SKIP_VARIABLE}=1")
    pytest.fail(f"{reason}. Outside CI, set {SKIP_VARIABLE}=1 to skip it explicitly.")


@contextlib.contextmanager
def login_role(db_url: str) -> Iterator[tuple[str, str]]:
    """Apply the role script (as `psql -f` would) and create a login role that is a member of
    `prebuildd` and holds nothing else; yields (its name, its URL). Dropped afterwards."""
    script = sql.SQL(ROLE_SCRIPT.read_text(encoding="utf-8"))  # a file of ours, not input
    login, password = f"pbd_e2e_{uuid4().hex[:12]}", secrets.token_urlsafe(16)
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(script)
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                sql.Identifier(login), sql.Literal(password), sql.Identifier(ROLE)
            )
        )
    params = conninfo_to_dict(db_url)
    params.update(user=login, password=password)
    try:
        yield login, make_conninfo("", **params)
    finally:
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (login,),
            )
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(login)))


def _sessions_by_user(url: str) -> set[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name IN ('prebuildd', 'prebuildd-listener')"
        ).fetchall()
    return {str(row[0]) for row in rows}


def test_the_service_process_does_its_whole_job_as_the_least_privilege_role(
    superuser_db_url: str,
) -> None:
    url = superuser_db_url
    with psycopg.connect(url) as conn:
        org = make_org(conn, name="acme")
        web = make_template(conn, org, name="web")
        dev = make_preset(conn, web.version_id, name="dev", desired=2)
        v2 = make_version(conn, web.id, active=False)
        dev2 = make_preset(conn, v2, name="dev", desired=1)
        gpu_tpl = make_template(conn, org, name="gpu")
        gpu = make_preset(conn, gpu_tpl.version_id, name="gpu", desired=1)
        now = conn.execute("SELECT now()").fetchone()
        assert now is not None
        for minutes in (90, 80, 70):  # three failed creates: the hard limit is reached
            make_prebuild(conn, gpu, job_status="failed", created_at=ago(now[0], minutes=minutes))
        admin = make_user(conn)
        conn.execute("UPDATE users SET rbac_roles = '{template-admin}' WHERE id = %s", (admin,))
        user = make_user(conn)
        conn.commit()

    with login_role(url) as (login, role_url), Processes(url) as procs:
        # Debug: the paused reconciles of a sweep are quiet, and quiet sweeps log at debug.
        service = procs.service("--no-migrate", "--log-level", "debug", url=role_url)
        procs.provisioner()  # Coder's side: the owner
        port = service.metrics_port()
        wait_ready(port, timeout=WAIT)
        assert _sessions_by_user(url) == {login}, "every session of the service is the role's"

        # Startup: the pool fills; the hard-limited preset is stored and its admin notified.
        eventually(lambda: eligible(url, dev) == 2, timeout=WAIT, what="web/dev full")
        eventually(
            lambda: scalar(
                url,
                "SELECT count(*) FROM notification_messages WHERE user_id = %(u)s",
                {"u": admin},
            )
            == 2,
            timeout=WAIT, what="the hard-limit notification (inbox and smtp)",
        )
        assert (
            scalar(
                url,
                "SELECT prebuild_status::text FROM template_version_presets WHERE id = %(p)s",
                {"p": gpu},
            )
            == "hard_limited"
        )

        # A claim (Coder's write): the claim's event makes the service replace it.
        with psycopg.connect(url) as conn, conn.transaction():
            assert claim(conn, preset_id=dev, user_id=user, name="mine") is not None
        eventually(lambda: eligible(url, dev) == 2, timeout=WAIT, what="the claim replaced")

        # Paused by the role, an event changes nothing; resumed, it does.
        assert run_cli("pause", "--database-url", role_url).returncode == 0
        service.wait_for(
            lambda r: r.get("msg") == "reconciled" and r.get("paused") is True,
            timeout=WAIT, what="a reconcile that saw the pause",
        )
        with psycopg.connect(url) as conn:
            promote(conn, web.id, v2)
        service.wait_for(
            lambda r: r.get("msg") == "reconciled"
            and r.get("trigger") == "event"
            and r.get("template_id") == str(web.id)
            and r.get("paused") is True,
            timeout=WAIT, what="the promotion reconciled while paused",
        )
        assert pools(url)[dev].live == 2, "a paused service wrote"
        assert run_cli("resume", "--database-url", role_url).returncode == 0
        eventually(
            lambda: pools(url)[dev].live == 0 and eligible(url, dev2) == 1,
            timeout=WAIT, what="the promotion moved over after the resume",
            on_timeout=procs.dump,
        )

        metrics = scrape(port)
        assert metrics.total("prebuildd_reconcile_errors_total") == 0
        assert metrics.total("prebuildd_events_received_total") > 0
        eventually(
            lambda: reconciled(service, trigger="event"), timeout=WAIT,
            what="reconciles driven by events", on_timeout=service.tail,
        )
        problems = [
            r
            for r in service.records()
            if "permission" in str(r).lower() or "privilege" in str(r).lower()
        ]
        assert not problems, problems
        assert not error_records(service), service.tail(40)
        assert _sessions_by_user(url) == {login}
    assert_integrity(url)
