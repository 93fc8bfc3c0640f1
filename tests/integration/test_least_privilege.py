"""deploy/sql/prebuildd-role.sql grants what prebuildd needs, and nothing Coder keeps for itself.

Each test applies the script to a fresh migrated database (as the superuser the harness
connects with, standing in for the owner of Coder's tables) and connects as a new LOGIN role
that is a member of `prebuildd`: it holds those grants and nothing else. (`prebuildd` itself
is cluster-wide; a login role per test keeps tests independent and is dropped afterwards.)

Three kinds of proof:
* the real code, run as the role, does the whole job: sweeps that create, cancel, delete and
  store preset statuses (so the triggers fire on the role's own writes), the event-driven
  service (LISTEN, workers, periodic sweep, metrics loop, probes), and the operator commands
  `reconcile`, `status`, `pause`, `resume`, `invalidate`;
* every query the role is meant to run is EXPLAINed as the role. PostgreSQL checks all table
  and column privileges of a statement when its executor starts, which EXPLAIN does, so a
  missing grant on a branch the scenarios never reach fails here too. A new file of queries
  must be classified below, as the role's or the owner's;
* writes Coder keeps for itself (claims, provisioner jobs' progress, users, agents' secrets)
  and every schema change fail with "permission denied".
"""

from __future__ import annotations

import logging
import re
import secrets
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, LiteralString
from uuid import UUID, uuid4

import anyio
import psycopg
import pytest
from _live import eventually, fast_settings, running_service
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from factories import (
    make_org,
    make_prebuild,
    make_preset,
    make_template,
    make_user,
    make_version,
)
from prebuildd import store
from prebuildd.cli import main
from prebuildd.model import PlanConfig
from prebuildd.queries import parse_blocks, query, read_sql_file, sql_root
from prebuildd.reconciler import Outcome
from prebuildd.report import sweep_once

Conn = psycopg.Connection[Any]

ROLE_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "sql" / "prebuildd-role.sql"
ROLE = "prebuildd"

# Files of sql/queries/ whose every query runs as the role (`run`, `reconcile`, `status`,
# `pause`, `resume`, `invalidate`).
ROLE_FILES = {
    "snapshot.sql",
    "actions.sql",
    "admin.sql",
    "health.sql",
    "listener.sql",
    "notifications.sql",
}
# Files whose queries run as the owner, and why.
OWNER_FILES = {
    "migrate.sql": "`prebuildd migrate` changes the schema",
    "claim.sql": "claims are Coder's; `prebuildd claim` is a development tool",
    "provisioner.sql": "the simulated provisioner stands in for Coder's provisioners",
    "demo.sql": "`prebuildd demo` seeds its own database",
}

PENDING_CREATES: LiteralString = """
SELECT count(*) FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
WHERE b.template_version_preset_id = %s AND b.build_number = 1 AND b.transition = 'start'
  AND j.job_status = 'pending'
"""
CANCELED_AND_RETIRED: LiteralString = """
SELECT count(*) FROM workspace_builds b
JOIN provisioner_jobs j ON j.id = b.job_id JOIN workspaces w ON w.id = b.workspace_id
WHERE b.template_version_preset_id = %s AND b.build_number = 1 AND j.job_status = 'canceled'
  AND w.deleted
"""
DELETE_BUILDS: LiteralString = """
SELECT count(*) FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
WHERE b.workspace_id = %s AND b.transition = 'delete' AND j.job_status = 'pending'
"""
PRESET_STATUS: LiteralString = (
    "SELECT prebuild_status::text FROM template_version_presets WHERE id = %s"
)


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


def apply_role_script(url: str) -> None:
    """What an operator runs after `prebuildd migrate` (psql -f), here through psycopg."""
    # The script is a file of this repository, never input: as trusted as a literal.
    # Executed without parameters, so psycopg sends it as is, several statements at once.
    script = sql.SQL(ROLE_SCRIPT.read_text(encoding="utf-8"))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(script)


def _as_user(url: str, user: str, password: str) -> str:
    params = conninfo_to_dict(url)
    params.update(user=user, password=password)
    return make_conninfo("", **params)


@pytest.fixture(autouse=True)
def _superuser_harness(request: pytest.FixtureRequest) -> None:
    """These tests create and alter cluster roles: they need the harness's superuser."""
    if not {"db_url", "empty_db_url", "role_url"} & set(request.fixturenames):
        return
    admin_url: str = request.getfixturevalue("pg_admin_url")
    with psycopg.connect(admin_url) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if not (row and row[0]):
        pytest.skip("needs a superuser test server (PREBUILDD_TEST_DATABASE_URL is not one)")


@pytest.fixture
def role_url(db_url: str) -> Iterator[str]:
    """URL of a fresh login role whose only rights are those of `prebuildd`."""
    apply_role_script(db_url)
    login = f"pbd_lp_{uuid4().hex[:12]}"
    password = secrets.token_urlsafe(16)
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                sql.Identifier(login), sql.Literal(password), sql.Identifier(ROLE)
            )
        )
    try:
        yield _as_user(db_url, login, password)
    finally:
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (login,),
            )
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(login)))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def cli_logging() -> Iterator[None]:
    """`main()` points the root logger at the current stderr (pytest's capture, closed after
    the test): put the handlers back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _scalar(conn: Conn, statement: LiteralString, *params: object) -> Any:
    row = conn.execute(statement, params).fetchone()
    conn.commit()  # read committed data next time, and hold no snapshot meanwhile
    return None if row is None else row[0]


def _sweep(url: str) -> list[Outcome]:
    return anyio.run(sweep_once, url, PlanConfig(), False)


def _failures(outcomes: list[Outcome]) -> dict[UUID, str]:
    return {preset: error for o in outcomes for preset, error in o.failed_presets}


# ---------------------------------------------------------------------------------------------
# The role script itself
# ---------------------------------------------------------------------------------------------


def test_script_is_idempotent_and_converges(db_url: str) -> None:
    """A re-run changes nothing, and removes grants that are not in the script."""
    apply_role_script(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        before = _role_privileges(conn)
        conn.execute("GRANT DELETE ON workspaces TO prebuildd")
        conn.execute("GRANT UPDATE (owner_id) ON workspaces TO prebuildd")
        conn.execute("GRANT SELECT ON prebuildd.schema_migrations TO prebuildd")
        assert _role_privileges(conn) != before
        apply_role_script(db_url)
        assert _role_privileges(conn) == before
        apply_role_script(db_url)
        assert _role_privileges(conn) == before
        assert ("workspaces", "deleted", "UPDATE") in before
        assert not any(
            table == "users" and column == "hashed_password" for table, column, _ in before
        )
        assert not any(privilege == "DELETE" for _, _, privilege in before)


def _role_privileges(conn: Conn) -> set[tuple[str, str, str]]:
    """(table, column or '*', privilege) held by `prebuildd` in this database."""
    rows = conn.execute(
        """
        SELECT table_name::text, '*', privilege_type::text
        FROM information_schema.role_table_grants WHERE grantee = 'prebuildd'
        UNION
        SELECT table_name::text, column_name::text, privilege_type::text
        FROM information_schema.column_privileges WHERE grantee = 'prebuildd'
        """
    ).fetchall()
    return {(t, c, p) for t, c, p in rows}


def test_script_refuses_before_migrate(empty_db_url: str) -> None:
    with pytest.raises(psycopg.errors.RaiseException, match="prebuildd migrate"):
        apply_role_script(empty_db_url)


@pytest.mark.parametrize(
    ("elevate", "undo"),
    [
        ("ALTER ROLE prebuildd CREATEDB", "ALTER ROLE prebuildd NOCREATEDB"),
        ("GRANT pg_read_all_data TO prebuildd", "REVOKE pg_read_all_data FROM prebuildd"),
    ],
    ids=["attribute", "membership"],
)
def test_script_refuses_an_elevated_role(
    db_url: str, elevate: LiteralString, undo: LiteralString
) -> None:
    apply_role_script(db_url)  # the role exists
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(elevate)
        try:
            with pytest.raises(psycopg.errors.RaiseException, match="not a least-privilege role"):
                apply_role_script(db_url)
        finally:
            conn.execute(undo)
    apply_role_script(db_url)


def test_role_has_no_attributes_beyond_login(db_url: str) -> None:
    apply_role_script(db_url)
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT rolcanlogin, rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication"
            " OR rolbypassrls FROM pg_roles WHERE rolname = 'prebuildd'"
        ).fetchone()
    assert row == (True, False)


# ---------------------------------------------------------------------------------------------
# Every query of the role is permitted; the owner's are classified
# ---------------------------------------------------------------------------------------------


def _query_files() -> set[str]:
    return {e.name for e in (sql_root() / "queries").iterdir() if e.name.endswith(".sql")}


def _role_queries() -> list[str]:
    """Every named query of the role's files, except LISTEN: it needs no privilege, cannot be
    EXPLAINed, and the service test listens as the role."""
    names: list[str] = []
    for file in sorted(ROLE_FILES & _query_files()):
        for name, text in parse_blocks(read_sql_file("queries", file), file).items():
            if not re.search(r"^\s*LISTEN\b", text, re.MULTILINE | re.IGNORECASE):
                names.append(name)
    return names


def test_every_query_file_is_classified() -> None:
    unclassified = _query_files() - ROLE_FILES - set(OWNER_FILES)
    assert not unclassified, (
        f"{sorted(unclassified)}: add to ROLE_FILES (and grant what it needs in "
        "deploy/sql/prebuildd-role.sql) or to OWNER_FILES"
    )
    assert _query_files() >= ROLE_FILES


def _sample(name: str) -> object:
    """A value of the right type for a query parameter, by its name."""
    fixed: dict[str, object] = {
        "count": 1,
        "hard_limit": 3,
        "paused": True,
        "status": "healthy",
        "trace_metadata": Jsonb({}),
        "name": "probe",
    }
    if name in fixed:
        return fixed[name]
    if name.endswith("_ids"):
        return [uuid4()]
    if name.endswith("_id"):
        return uuid4()
    if name == "now" or name.endswith(("_at", "_since")):
        return datetime.now(UTC)
    raise LookupError(f"no sample value for %({name})s: teach _sample() its type")


def _params(text: str) -> dict[str, object] | None:
    names = set(re.findall(r"%\((\w+)\)s", text))
    return {name: _sample(name) for name in names} or None


@pytest.mark.parametrize("name", _role_queries())
def test_role_may_run_query(role_url: str, name: str) -> None:
    text = str(query(name).as_string(None))
    with psycopg.connect(role_url, autocommit=True) as conn:
        conn.execute(sql.SQL("EXPLAIN ") + query(name), _params(text))


# ---------------------------------------------------------------------------------------------
# What the role may not do
# ---------------------------------------------------------------------------------------------

FORBIDDEN: list[tuple[str, LiteralString]] = [
    ("claim a workspace", "UPDATE workspaces SET owner_id = owner_id"),
    ("rename a workspace", "UPDATE workspaces SET name = name"),
    ("hard-delete a workspace", "DELETE FROM workspaces"),
    ("progress a job", "UPDATE provisioner_jobs SET started_at = now()"),
    ("fail a job", "UPDATE provisioner_jobs SET error = 'x'"),
    ("take a job", "UPDATE provisioner_jobs SET worker_id = gen_random_uuid()"),
    ("promote a version", "UPDATE templates SET active_version_id = active_version_id"),
    ("change a preset", "UPDATE template_version_presets SET desired_instances = 1"),
    ("touch users", "UPDATE users SET deleted = true"),
    ("read password hashes", "SELECT hashed_password FROM users"),
    ("read agent tokens", "SELECT auth_token FROM workspace_agents"),
    ("insert agents", "INSERT INTO workspace_agents (id) VALUES (gen_random_uuid())"),
    ("wipe settings", "DELETE FROM site_configs"),
    ("read other settings", "SELECT value FROM site_configs"),
    ("write settings directly", "UPDATE site_configs SET value = value"),
    ("truncate", "TRUNCATE workspace_builds"),
    ("drop a trigger", "DROP TRIGGER prebuildd_job_status ON provisioner_jobs"),
    ("read migrate's bookkeeping", "SELECT path FROM prebuildd.schema_migrations"),
    ("create in prebuildd's schema", "CREATE TABLE prebuildd.probe (id int)"),
]


@pytest.mark.parametrize(
    "statement", [s for _, s in FORBIDDEN], ids=[label for label, _ in FORBIDDEN]
)
def test_role_is_refused(role_url: str, statement: LiteralString) -> None:
    with (
        psycopg.connect(role_url, autocommit=True) as conn,
        pytest.raises(errors.InsufficientPrivilege),
    ):
        conn.execute(statement)


def test_role_cannot_claim_through_prebuildds_own_claim_query(role_url: str) -> None:
    """`prebuildd claim` is a development tool: as the role it is refused, not half-done."""
    text = str(query("claim_prebuild").as_string(None))
    with (
        psycopg.connect(role_url, autocommit=True) as conn,
        pytest.raises(errors.InsufficientPrivilege),
    ):
        conn.execute(sql.SQL("EXPLAIN ") + query("claim_prebuild"), _params(text))


def test_role_cannot_create_in_coders_schema(role_url: str) -> None:
    with psycopg.connect(role_url, autocommit=True) as conn:
        server = conn.info.server_version
        if server < 150000:
            pytest.skip("before PostgreSQL 15, PUBLIC may create in schema public by default")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE probe (id int)")


# ---------------------------------------------------------------------------------------------
# The whole job, as the role
# ---------------------------------------------------------------------------------------------


def test_sweeps_create_cancel_delete_and_set_statuses_as_the_role(
    conn: Conn, role_url: str
) -> None:
    org = make_org(conn)
    # An active template with one running prebuild, wanting two.
    a = make_template(conn, org)
    a1 = make_preset(conn, a.version_id, desired=2, parameters={"region": "eu"})
    running = make_prebuild(conn, a1, created_at=datetime.now(UTC) - timedelta(hours=2))
    # Three failed creates in a row: the hard limit.
    b = make_template(conn, org)
    b1 = make_preset(conn, b.version_id, desired=1)
    for _ in range(3):
        make_prebuild(conn, b1, job_status="failed")
    # A version without an import job: creating is invalid input.
    c = make_template(conn, org, import_job=False)
    c1 = make_preset(conn, c.version_id, desired=1)
    conn.commit()

    first = _sweep(role_url)
    assert set(_failures(first)) <= {c1}, _failures(first)
    assert "permission" not in " ".join(_failures(first).values())
    assert _scalar(conn, PENDING_CREATES, a1) == 1
    assert _scalar(conn, PRESET_STATUS, b1) == "hard_limited"
    assert _scalar(conn, PRESET_STATUS, c1) == "validation_failed"

    # Promotion (by Coder, as the owner): the old preset's queued create is canceled and its
    # workspace retired, its running prebuild deleted, and the new preset filled.
    v2 = make_version(conn, a, active=True)
    a2 = make_preset(conn, v2, desired=1, parameters={"region": "eu"})
    conn.commit()

    second = _sweep(role_url)
    assert set(_failures(second)) <= {c1}, _failures(second)
    assert _scalar(conn, CANCELED_AND_RETIRED, a1) == 1
    assert _scalar(conn, PENDING_CREATES, a1) == 0
    assert _scalar(conn, DELETE_BUILDS, running.workspace_id) == 1
    assert _scalar(conn, PENDING_CREATES, a2) == 1

    totals = anyio.run(_metrics_rows, role_url)
    assert totals[a1] >= 2


async def _metrics_rows(url: str) -> dict[UUID, int]:
    async with await psycopg.AsyncConnection.connect(url) as aconn:
        rows = await store.read_metrics_rows(aconn)
        paused = await store.read_paused(aconn)
    assert paused is False
    return {row.preset_id: row.created_total for row in rows}


# Coder's full schema refuses to queue a notification the user (or the template's default)
# turned off, with a BEFORE INSERT trigger that reads two tables as the writer. The subset
# prebuildd installs has neither; these stand-ins have the same shape.
CODER_ENQUEUE_GUARD: LiteralString = """
CREATE TABLE notification_preferences (
    user_id uuid NOT NULL,
    notification_template_id uuid NOT NULL,
    disabled boolean NOT NULL DEFAULT false,
    PRIMARY KEY (user_id, notification_template_id)
);
CREATE FUNCTION refuse_disabled_notification() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF EXISTS (
        SELECT 1
        FROM notification_templates AS t
        LEFT JOIN notification_preferences AS pref
            ON pref.notification_template_id = t.id AND pref.user_id = NEW.user_id
        WHERE t.id = NEW.notification_template_id
          AND (pref.disabled OR (NOT t.enabled_by_default AND pref.user_id IS NULL))
    ) THEN
        RAISE EXCEPTION 'notification turned off';
    END IF;
    RETURN NEW;
END
$fn$;
CREATE TRIGGER refuse_disabled_notification BEFORE INSERT ON notification_messages
    FOR EACH ROW EXECUTE FUNCTION refuse_disabled_notification();
"""


def test_hard_limit_notification_as_the_role_on_coders_schema(
    conn: Conn, db_url: str, role_url: str
) -> None:
    """The role queues Coder's notification for template admins, also through Coder's own
    enqueue trigger, which needs the script's conditional grants."""
    org = make_org(conn)
    admin = make_user(conn)
    conn.execute("UPDATE users SET rbac_roles = '{template-admin}' WHERE id = %s", (admin,))
    tpl = make_template(conn, org)
    preset = make_preset(conn, tpl.version_id, desired=1, status="hard_limited")
    conn.execute(CODER_ENQUEUE_GUARD)
    conn.commit()
    params = {"preset_id": preset, "now": datetime.now(UTC)}

    with psycopg.connect(role_url) as role:
        with pytest.raises(errors.InsufficientPrivilege, match="notification_preferences"):
            role.execute(query("notify_hard_limited"), params)
        role.rollback()
        apply_role_script(db_url)  # now that the table exists, its grants are added
        rows = role.execute(query("notify_hard_limited"), params).fetchall()
        role.commit()
    assert rows and {row[0] for row in rows} == {admin}


@pytest.mark.usefixtures("cli_logging")
def test_operator_commands_as_the_role(
    conn: Conn, role_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    org = make_org(conn)
    tpl = make_template(conn, org, name="lp-commands")
    preset = make_preset(conn, tpl.version_id, desired=2)
    conn.commit()
    url = ["--database-url", role_url]

    assert main(["pause", *url]) == 0
    assert main(["reconcile", "--once", *url]) == 0
    assert _scalar(conn, PENDING_CREATES, preset) == 0, "paused: nothing may be written"
    assert main(["resume", *url]) == 0
    assert main(["reconcile", "--once", *url]) == 0
    assert _scalar(conn, PENDING_CREATES, preset) == 2

    assert main(["invalidate", "--preset", str(preset), *url]) == 0
    invalidated = _scalar(
        conn, "SELECT last_invalidated_at FROM template_version_presets WHERE id = %s", preset
    )
    assert invalidated is not None

    capsys.readouterr()
    assert main(["status", *url]) == 0
    assert "lp-commands" in capsys.readouterr().out
    assert main(["reconcile", "--once", "--dry-run", *url]) == 0
    value = _scalar(conn, "SELECT value FROM site_configs WHERE key = 'prebuilds_settings'")
    assert '"reconciliation_paused": false' in value


@pytest.mark.anyio
async def test_event_driven_service_as_the_role(
    db_url: str, role_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """LISTEN, the startup sweep, events from Coder's writes and from the role's own writes,
    the periodic sweep, the metrics loop and both probes, all as the role."""
    caplog.set_level(logging.WARNING)
    with psycopg.connect(db_url) as owner:
        tpl = make_template(owner, make_org(owner))
        old = make_preset(owner, tpl.version_id, desired=2)
        owner.commit()

    settings = fast_settings(sweep_interval=timedelta(seconds=1))
    async with running_service(role_url, settings) as service:
        await eventually(lambda: _count(db_url, PENDING_CREATES, old, 2))
        assert await anyio.to_thread.run_sync(_http_status, service.http_port, "/readyz") == 200
        assert await anyio.to_thread.run_sync(_http_status, service.http_port, "/healthz") == 200

        with psycopg.connect(db_url) as owner:
            v2 = make_version(owner, tpl, active=True)
            new = make_preset(owner, v2, desired=1)
            owner.commit()
        await eventually(lambda: _count(db_url, CANCELED_AND_RETIRED, old, 2))
        await eventually(lambda: _count(db_url, PENDING_CREATES, new, 1))
        await anyio.sleep(1.5)  # a periodic sweep and a metrics refresh, as the role
        errors_seen = _sample_total(service, "prebuildd_reconcile_errors_total")
        received = _sample_total(service, "prebuildd_events_received_total")

    assert errors_seen == 0
    assert received > 0, "the promotion must arrive as a notification"
    # Warnings can be benign races (a sweep planned against the version just replaced);
    # errors, or anything mentioning privileges, cannot.
    problems = [
        f"{r.levelname} {r.getMessage()} {getattr(r, 'error', '')}"
        for r in caplog.records
        if r.levelno >= logging.ERROR or "permission" in str(vars(r)).lower()
    ]
    assert not problems, problems


async def _count(url: str, statement: LiteralString, preset: UUID, expected: int) -> bool:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as aconn:
        cur = await aconn.execute(statement, (preset,))
        row = await cur.fetchone()
    return row is not None and row[0] == expected


def _http_status(port: int | None, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        status: int = response.status
    return status


def _sample_total(service: Any, metric: str) -> float:
    total = 0.0
    for family in service.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == metric:
                total += sample.value
    return total
