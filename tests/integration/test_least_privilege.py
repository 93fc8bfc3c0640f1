"""deploy/sql/prebuildd-role.sql grants what prebuildd needs, and a leaked credential can touch
only prebuilds' rows.

The script is applied to a migrated database (as the superuser the harness connects with,
standing in for the owner of Coder's tables) and the tests connect as a new LOGIN role that is
a member of `prebuildd`: it holds those grants and nothing else. (`prebuildd` itself is
cluster-wide; a login role per database keeps tests independent and is dropped afterwards.)

Four kinds of proof, all by running real statements (EXPLAIN would miss execution-time checks
such as column defaults and trigger bodies):
* the real code, run as the role, does the whole job: sweeps that create, cancel, delete,
  store preset statuses and notify admins; the event-driven service (LISTEN, workers, a
  periodic sweep that is shown to have run, metrics loop, probes) reacting to a promotion;
  the operator commands `reconcile`, `status`, `pause`, `resume`, `invalidate`;
* every query the role is meant to run is executed as the role with valid parameters on a
  seeded database, and the writes are shown to have written. A new file of queries must be
  classified below, as the role's or the owner's;
* each forbidden act fails: reading Terraform state and secrets, writing any of Coder's
  tables directly (each statement is first shown to be valid by running it as the owner),
  temporary tables, prebuildd's internal functions; and the write functions, called on users'
  rows, do nothing;
* the functions resolve Coder's tables through a pinned search_path that puts pg_temp last.

These tests need a superuser server (they create roles and change database privileges). The
embedded one is; with PREBUILDD_TEST_DATABASE_URL pointing elsewhere they fail, unless
PREBUILDD_TEST_SKIP_ROLE_TESTS=1 is set outside CI (CI=true never skips them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
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
    make_job,
    make_org,
    make_prebuild,
    make_preset,
    make_template,
    make_user,
    make_version,
)
from prebuildd import store
from prebuildd.claim import claim_params
from prebuildd.cli import main
from prebuildd.model import PREBUILDS_USER_ID, PlanConfig
from prebuildd.queries import parse_blocks, query, read_sql_file, sql_root
from prebuildd.reconciler import Outcome
from prebuildd.sweep import sweep_once

Conn = psycopg.Connection[Any]

ROLE_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "sql" / "prebuildd-role.sql"
ROLE = "prebuildd"
SKIP_VARIABLE = "PREBUILDD_TEST_SKIP_ROLE_TESTS"

# Files of sql/queries/ whose every query runs as the role (`run`, `reconcile`, `status`,
# `pause`, `resume`, `invalidate`).
ROLE_FILES = {
    "snapshot.sql",
    "demand.sql",
    "actions.sql",
    "admin.sql",
    "health.sql",
    "listener.sql",
    "notifications.sql",
    "throttle.sql",
}
# Files whose queries run as the owner, and why.
OWNER_FILES = {
    "migrate.sql": "`prebuildd migrate` changes the schema",
    "claim.sql": "claims are Coder's; `prebuildd claim` is a development tool",
    "provisioner.sql": "the simulated provisioner stands in for Coder's provisioners",
    "seed.sql": "Coder rows for tests and `prebuildd demo`, built as the owner of Coder's tables",
}
# The functions the role may execute (sql/functions/prebuild_writes.sql).
ENTRY_POINTS = {
    "create_prebuilds",
    "delete_prebuilds",
    "cancel_pending_prebuilds",
    "set_preset_status",
    "notify_hard_limited",
    "invalidate_preset",
    "set_reconciliation_paused",
    # Every create, delete and cancel of a reconcile in one call (prebuild_actions.sql).
    "execute_actions",
    # The pause switch's read (sql/functions/pause_switch.sql): one row of site_configs.
    "prebuilds_settings",
    # sql/functions/throttle.sql
    "throttle_lines",
    "create_prebuilds_capped",
    "record_throttle_waits",
    # sql/functions/autoscale.sql
    "set_autoscale_policy",
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
NOTIFIED: LiteralString = "SELECT count(*) FROM notification_messages WHERE user_id = %s"


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


@pytest.fixture(scope="module")
def superuser_server(pg_admin_url: str) -> str:
    """The session's server, which must let these tests create roles and change privileges."""
    with psycopg.connect(pg_admin_url) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if row and row[0]:
        return pg_admin_url
    reason = (
        "the least-privilege tests need a superuser test server (PREBUILDD_TEST_DATABASE_URL "
        "is not one)"
    )
    if os.environ.get("CI", "").lower() != "true" and os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"{reason}; skipped because {SKIP_VARIABLE}=1")
    pytest.fail(f"{reason}. Outside CI, set {SKIP_VARIABLE}=1 to skip them explicitly.")


@pytest.fixture(autouse=True)
def _superuser_harness(request: pytest.FixtureRequest) -> None:
    if {"db_url", "empty_db_url", "role_url"} & set(request.fixturenames):
        request.getfixturevalue("superuser_server")


@contextlib.contextmanager
def _login_role(db_url: str) -> Iterator[str]:
    """A fresh login role whose only rights are those of `prebuildd`; yields its URL."""
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
def role_url(db_url: str) -> Iterator[str]:
    """URL of a fresh login role whose only rights are those of `prebuildd`."""
    apply_role_script(db_url)
    with _login_role(db_url) as url:
        yield url


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
# A seeded database shared by the module's read-only tests (each rolls back what it does)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seed:
    """Rows of every kind the role's queries and the forbidden acts need."""

    owner_url: str
    role_url: str
    org: UUID
    admin: UUID
    user: UUID
    template: UUID
    version: UUID  # active
    old_version: UUID
    active: UUID  # preset of the active version, desired 2, one running prebuild
    old: UUID  # preset of the old version, one queued create to cancel
    unwanted: UUID  # preset of the active version without prebuilds (desired NULL)
    limited: UUID  # hard_limited preset of another template
    running: UUID  # the active preset's running prebuild (workspace)
    users_running: UUID  # a user's workspace: succeeded start of the active preset
    users_running_job: UUID
    users_pending: UUID  # a user's workspace: queued first start of the old preset
    users_pending_job: UUID
    users_claimed: UUID  # a prebuild claimed by the user
    spare_job: UUID  # a user's job without a build yet


# Coder's api_keys (secrets of every user) is not in the subset prebuildd installs; a stand-in
# of the same name shows the role gets nothing on tables it is not granted.
API_KEYS_STAND_IN: LiteralString = """
CREATE TABLE api_keys (
    id text PRIMARY KEY,
    hashed_secret bytea NOT NULL,
    user_id uuid NOT NULL
)
"""


@pytest.fixture(scope="module")
def seed(superuser_server: str, template_db_url: str) -> Iterator[Seed]:
    name = f"t_lp_{uuid.uuid4().hex[:12]}"
    template = str(conninfo_to_dict(template_db_url)["dbname"])
    with psycopg.connect(superuser_server, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    params = conninfo_to_dict(superuser_server)
    params["dbname"] = name
    url = make_conninfo("", **params)
    try:
        with psycopg.connect(url) as conn:
            conn.execute(API_KEYS_STAND_IN)
            values = _seed_rows(conn)
            conn.commit()
        apply_role_script(url)
        with _login_role(url) as role:
            yield Seed(owner_url=url, role_url=role, **values)
    finally:
        with psycopg.connect(superuser_server, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _seed_rows(conn: Conn) -> dict[str, UUID]:
    org = make_org(conn)
    admin = make_user(conn)
    conn.execute("UPDATE users SET rbac_roles = '{template-admin}' WHERE id = %s", (admin,))
    user = make_user(conn)
    tpl = make_template(conn, org)
    old = make_preset(conn, tpl.version_id, desired=1, parameters={"region": "eu"})
    queued = make_prebuild(conn, old, job_status="pending")
    users_pending = make_prebuild(conn, old, job_status="pending", owner=user)
    version = make_version(conn, tpl, active=True)
    active = make_preset(conn, version, desired=2, parameters={"region": "eu"})
    unwanted = make_preset(conn, version, desired=None)
    running = make_prebuild(conn, active)
    users_running = make_prebuild(conn, active, owner=user)
    claimed = make_prebuild(conn, active)
    conn.execute(
        "UPDATE workspaces SET owner_id = %s, name = 'mine' WHERE id = %s",
        (user, claimed.workspace_id),
    )
    conn.execute(
        "UPDATE workspace_builds SET provisioner_state = 'secret-tfstate'"
        " WHERE workspace_id = ANY(%s)",
        ([running.workspace_id, users_running.workspace_id],),
    )
    spare_job = make_job(conn, organization_id=org, initiator_id=user, status="pending")
    other = make_template(conn, org)
    limited = make_preset(conn, other.version_id, desired=1, status="hard_limited")
    assert queued.workspace_id
    return {
        "org": org,
        "admin": admin,
        "user": user,
        "template": tpl.id,
        "version": version,
        "old_version": tpl.version_id,
        "active": active,
        "old": old,
        "unwanted": unwanted,
        "limited": limited,
        "running": running.workspace_id,
        "users_running": users_running.workspace_id,
        "users_running_job": users_running.job_id,
        "users_pending": users_pending.workspace_id,
        "users_pending_job": users_pending.job_id,
        "users_claimed": claimed.workspace_id,
        "spare_job": spare_job,
    }


@contextlib.contextmanager
def _rolled_back(url: str) -> Iterator[Conn]:
    """A connection whose work is undone afterwards (the shared seed stays as it is)."""
    with psycopg.connect(url) as conn:
        try:
            yield conn
        finally:
            conn.rollback()


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
        conn.execute(
            "GRANT EXECUTE ON FUNCTION prebuildd.queue_builds("
            "text, boolean, timestamptz, jsonb, uuid[], uuid[], uuid[], integer[], uuid[], jsonb)"
            " TO prebuildd"
        )
        conn.execute(
            sql.SQL("GRANT TEMPORARY ON DATABASE {} TO prebuildd").format(
                sql.Identifier(conn.info.dbname)
            )
        )
        assert _role_privileges(conn) != before
        apply_role_script(db_url)
        assert _role_privileges(conn) == before
        apply_role_script(db_url)
        assert _role_privileges(conn) == before
        assert ("workspaces", "owner_id", "SELECT") in before
        assert ("routine", "create_prebuilds", "EXECUTE") in before
        assert ("database", conn.info.dbname, "CONNECT") in before
        assert not any(
            table == "users" and column == "hashed_password" for table, column, _ in before
        )
        writes = {"INSERT", "UPDATE", "DELETE", "TRUNCATE", "TEMPORARY", "CREATE"}
        assert not [p for p in before if p[2] in writes]
        executable = {column for kind, column, _ in before if kind == "routine"}
        assert executable == ENTRY_POINTS


def _role_privileges(conn: Conn) -> set[tuple[str, str, str]]:
    """(table, column or '*', privilege), ('routine', name, 'EXECUTE') and ('database', name,
    privilege) held by `prebuildd` itself in this database."""
    rows = conn.execute(
        """
        SELECT table_name::text, '*', privilege_type::text
        FROM information_schema.role_table_grants WHERE grantee = 'prebuildd'
        UNION
        SELECT table_name::text, column_name::text, privilege_type::text
        FROM information_schema.column_privileges WHERE grantee = 'prebuildd'
        UNION
        SELECT 'routine', routine_name::text, privilege_type::text
        FROM information_schema.role_routine_grants WHERE grantee = 'prebuildd'
        UNION
        SELECT 'database', d.datname::text, a.privilege_type
        FROM pg_database d CROSS JOIN LATERAL aclexplode(d.datacl) a
        WHERE d.datname = current_database() AND a.grantee = 'prebuildd'::regrole
        """
    ).fetchall()
    return {(t, c, p) for t, c, p in rows}


def test_script_refuses_before_migrate(empty_db_url: str) -> None:
    with pytest.raises(psycopg.errors.RaiseException, match="prebuildd migrate"):
        apply_role_script(empty_db_url)


def test_script_refuses_without_the_write_functions(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "DROP FUNCTION prebuildd.create_prebuilds("
            "uuid, uuid, integer, timestamptz, jsonb, jsonb)"
        )
    with pytest.raises(psycopg.errors.RaiseException, match="write functions are not installed"):
        apply_role_script(db_url)


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


@pytest.mark.parametrize(
    ("given", "refusal"),
    [
        ("GRANT INSERT ON workspace_builds TO PUBLIC", "can still write directly"),
        ("GRANT UPDATE (deleted) ON workspaces TO PUBLIC", "can still write directly"),
        ("GRANT SELECT (provisioner_state) ON workspace_builds TO PUBLIC", "can still read"),
        (
            "GRANT EXECUTE ON FUNCTION prebuildd.queue_builds(text, boolean, timestamptz, jsonb,"
            " uuid[], uuid[], uuid[], integer[], uuid[], jsonb) TO PUBLIC",
            "executable by PUBLIC",
        ),
    ],
    ids=["insert", "update", "state", "internal-function"],
)
def test_script_verifies_what_public_gives_away(
    db_url: str, given: LiteralString, refusal: str
) -> None:
    """What PUBLIC holds, every role holds: the script checks the end result and rolls back."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(given)
    with pytest.raises(psycopg.errors.RaiseException, match=refusal):
        apply_role_script(db_url)
    # Rolled back as a whole: in this fresh database the role holds nothing.
    with psycopg.connect(db_url) as conn:
        assert _role_privileges(conn) == set()


def test_role_has_no_attributes_beyond_login(db_url: str) -> None:
    apply_role_script(db_url)
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT rolcanlogin, rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication"
            " OR rolbypassrls FROM pg_roles WHERE rolname = 'prebuildd'"
        ).fetchone()
    assert row == (True, False)


# ---------------------------------------------------------------------------------------------
# TEMPORARY and CREATE, which PUBLIC usually holds
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _plain_role(db_url: str) -> Iterator[str]:
    """A login role with no grant of its own (only what PUBLIC has); yields its URL."""
    name = f"pbd_other_{uuid4().hex[:12]}"
    password = secrets.token_urlsafe(16)
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
    try:
        yield _as_user(db_url, name, password)
    finally:
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_role_cannot_create_temporary_tables_and_others_still_can(db_url: str) -> None:
    with _plain_role(db_url) as before_url:
        apply_role_script(db_url)
        with _login_role(db_url) as role:
            with (
                psycopg.connect(role, autocommit=True) as conn,
                pytest.raises(errors.InsufficientPrivilege, match="temporary"),
            ):
                conn.execute("CREATE TEMP TABLE probe (id int)")
            # Roles that had it through PUBLIC keep it, and so does the owner.
            for url in (before_url, db_url):
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("CREATE TEMP TABLE probe (id int)")
            # The trade-off the script's header states: a role created afterwards has to be
            # granted TEMPORARY explicitly.
            with _plain_role(db_url) as after_url:
                with (
                    psycopg.connect(after_url, autocommit=True) as conn,
                    pytest.raises(errors.InsufficientPrivilege),
                ):
                    conn.execute("CREATE TEMP TABLE probe (id int)")
                apply_role_script(db_url)  # a re-run does not change that either way
                with (
                    psycopg.connect(role, autocommit=True) as conn,
                    pytest.raises(errors.InsufficientPrivilege),
                ):
                    conn.execute("CREATE TEMP TABLE probe (id int)")


def test_role_cannot_create_in_coders_schema_even_where_public_may(db_url: str) -> None:
    """Before PostgreSQL 15, PUBLIC may CREATE in schema public; simulated here on any server."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        schema = conn.execute("SELECT current_schema()").fetchone()
        assert schema is not None
        conn.execute(
            sql.SQL("GRANT CREATE ON SCHEMA {} TO PUBLIC").format(sql.Identifier(schema[0]))
        )
    with _plain_role(db_url) as other:
        apply_role_script(db_url)
        with _login_role(db_url) as role:
            with (
                psycopg.connect(role, autocommit=True) as conn,
                pytest.raises(errors.InsufficientPrivilege),
            ):
                conn.execute("CREATE TABLE probe (id int)")
            with psycopg.connect(other, autocommit=True) as conn:
                conn.execute("CREATE TABLE probe (id int)")
                conn.execute("DROP TABLE probe")


# ---------------------------------------------------------------------------------------------
# Every query of the role runs, for real; the owner's are classified
# ---------------------------------------------------------------------------------------------


def _query_files() -> set[str]:
    return {e.name for e in (sql_root() / "queries").iterdir() if e.name.endswith(".sql")}


def _role_queries() -> list[str]:
    """Every named query of the role's files, except LISTEN: it takes an identifier, not
    parameters, and the service test listens as the role."""
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


# Queries that write, and how many rows each returns when it did its work on the seed.
WRITES_DONE: Mapping[str, int] = {
    "create_prebuilds": 1,  # one prebuild of the active preset
    "delete_prebuilds": 1,  # the running prebuild
    "cancel_pending_prebuilds": 1,  # the old preset's queued create
    "set_preset_status": 1,
    "notify_hard_limited": 2,  # the admin, by e-mail and in the inbox
    "invalidate_preset": 1,
    "set_reconciliation_paused": 1,
    "create_prebuilds_capped": 1,  # one prebuild, well under the cap
    "record_throttle_waits": 1,  # the count of the template's entries: the one recorded
    "execute_actions": 3,  # a create, the running prebuild's delete, the old preset's cancel
    "autoscale_set": 1,  # the active preset's (template, name)
}
# Which preset a query acts on, when not the active one.
PRESET_OF: Mapping[str, str] = {"cancel_pending_prebuilds": "old", "notify_hard_limited": "limited"}


def _valid(name: str, param: str, seed: Seed) -> object:
    """A value of a query parameter that makes the query act on the seeded rows."""
    values: dict[str, object] = {
        "preset_id": getattr(seed, PRESET_OF.get(name, "active")),
        "template_version_id": seed.version,
        "template_ids": [seed.template],
        "workspace_ids": [seed.running],
        "count": 1,
        "hard_limit": 3,
        "paused": True,
        "status": "healthy",
        "trace_metadata": Jsonb({}),
        "workspace_tags": Jsonb({}),
        "now": datetime.now(UTC),
        "backoff_lookback": timedelta(hours=1),
        "default_method": "smtp",
        "inbox": True,
        # The cap on pending prebuild jobs (throttle.sql): one entry in the template's line.
        "max_pending": 5,
        "version_ids": [seed.version],
        "create_tags": Jsonb([{}]),
        "take_locks": True,
        "preset_ids": [seed.active],
        "preset_templates": [seed.template],
        "organization_ids": [seed.org],
        "tag_sets": ['{"owner": "", "scope": "organization"}'],
        "held": [2],
        "waiting_since": [datetime.now(UTC)],
        # execute_actions: one action of each kind it runs, on the seeded rows.
        "actions": Jsonb(
            [
                {
                    "kind": "create",
                    "preset": str(seed.active),
                    "version": str(seed.version),
                    "count": 1,
                    "workspace_tags": {},
                    "max_pending": 0,
                },
                {"kind": "delete", "workspaces": [str(seed.running)]},
                {"kind": "cancel", "preset": str(seed.old)},
            ]
        ),
        # Demand: every preset of the template (the seed's user workspace is a miss), over a
        # window around now.
        "policies_only": False,
        "window_since": datetime.now(UTC) - timedelta(days=1),
        "window_end_at": datetime.now(UTC) + timedelta(hours=1),
        "mode": "auto",
        "min_instances": 1,
        "max_instances": 3,
    }
    if param not in values:
        raise LookupError(f"no valid value for %({param})s of {name}: teach _valid() its meaning")
    return values[param]


@pytest.mark.parametrize("name", _role_queries())
def test_role_runs_query(seed: Seed, name: str) -> None:
    text = str(query(name).as_string(None))
    params = {p: _valid(name, p, seed) for p in set(re.findall(r"%\((\w+)\)s", text))}
    with _rolled_back(seed.role_url) as conn:
        rows = conn.execute(query(name), params or None).fetchall()
    if name in WRITES_DONE:
        assert len(rows) == WRITES_DONE[name], rows
    assert name in WRITES_DONE or not re.search(
        r"\b(INSERT|UPDATE|DELETE)\b", text, re.IGNORECASE
    ), f"{name} writes: add it to WRITES_DONE with the rows it returns"


def test_every_write_is_a_function_of_prebuildds() -> None:
    texts = {
        name: text
        for file in ROLE_FILES
        for name, text in parse_blocks(read_sql_file("queries", file), file).items()
    }
    for name in WRITES_DONE:
        assert re.search(r"\bprebuildd\.\w+\(", texts[name]), name


# ---------------------------------------------------------------------------------------------
# What the role may not do: one test each, every statement shown valid as the owner first
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Forbidden:
    label: str
    statement: LiteralString
    # Run as the owner (rolled back) first: proves the statement is valid and would work, so
    # the role's failure is a privilege check, not a typo. Off for DDL on shared objects.
    control: bool = True


FORBIDDEN: list[Forbidden] = [
    # Secrets.
    Forbidden("read Terraform state", "SELECT provisioner_state FROM workspace_builds"),
    Forbidden("read password hashes", "SELECT hashed_password FROM users"),
    Forbidden("read agent tokens", "SELECT auth_token FROM workspace_agents"),
    Forbidden("read api keys", "SELECT hashed_secret FROM api_keys"),
    Forbidden("read e-mail addresses", "SELECT email FROM users"),
    Forbidden("read job inputs", "SELECT input FROM provisioner_jobs"),
    Forbidden("read other settings", "SELECT value FROM site_configs"),
    Forbidden("read migrate's bookkeeping", "SELECT path FROM prebuildd.schema_migrations"),
    # Users' rows.
    Forbidden(
        "soft-delete a user's workspace",
        "UPDATE workspaces SET deleted = true WHERE id = %(users_running)s",
    ),
    Forbidden(
        "cancel a user's job",
        "UPDATE provisioner_jobs SET canceled_at = now(), completed_at = now()"
        " WHERE id = %(users_pending_job)s",
    ),
    Forbidden(
        "claim a workspace",
        "UPDATE workspaces SET owner_id = %(user)s WHERE id = %(running)s",
    ),
    Forbidden("rename a workspace", "UPDATE workspaces SET name = name"),
    Forbidden("hard-delete a workspace", "DELETE FROM workspaces WHERE id = %(running)s"),
    Forbidden("progress a job", "UPDATE provisioner_jobs SET started_at = now()"),
    Forbidden("fail a job", "UPDATE provisioner_jobs SET error = 'x'"),
    Forbidden("take a job", "UPDATE provisioner_jobs SET worker_id = gen_random_uuid()"),
    Forbidden("touch users", "UPDATE users SET deleted = true WHERE id = %(user)s"),
    # Direct inserts, each a valid row of its table.
    Forbidden(
        "insert into workspaces",
        "INSERT INTO workspaces (id, created_at, updated_at, owner_id, organization_id,"
        " template_id, deleted, name, last_used_at, automatic_updates)"
        " VALUES (gen_random_uuid(), now(), now(), %(user)s, %(org)s, %(template)s, false,"
        " 'forged', now(), 'never')",
    ),
    Forbidden(
        "insert into provisioner_jobs",
        "INSERT INTO provisioner_jobs (id, created_at, updated_at, organization_id,"
        " initiator_id, provisioner, storage_method, type, input, file_id, tags)"
        " VALUES (gen_random_uuid(), now(), now(), %(org)s, %(user)s, 'terraform', 'file',"
        " 'workspace_build', '{}', gen_random_uuid(), '{}')",
    ),
    Forbidden(
        "insert into workspace_builds",
        "INSERT INTO workspace_builds (id, created_at, updated_at, workspace_id,"
        " template_version_id, build_number, transition, initiator_id, job_id, deadline,"
        " max_deadline, reason)"
        " SELECT gen_random_uuid(), now(), now(), %(users_running)s, %(version)s, 9, 'delete',"
        " %(user)s, %(spare_job)s, now(), now(), 'initiator'",
    ),
    Forbidden(
        "insert build parameters",
        "INSERT INTO workspace_build_parameters (workspace_build_id, name, value)"
        " SELECT id, 'forged', 'x' FROM workspace_builds WHERE workspace_id = %(users_running)s",
    ),
    Forbidden(
        "insert into notification_messages",
        "INSERT INTO notification_messages (id, notification_template_id, user_id, method,"
        " status, created_by, payload, created_at)"
        " VALUES (gen_random_uuid(), '414d9331-c1fc-4761-b40c-d1f4702279eb', %(admin)s,"
        " 'smtp', 'pending', 'forged', '{}', now())",
    ),
    Forbidden(
        "insert agents",
        "INSERT INTO workspace_agents (id) VALUES (gen_random_uuid())",
        control=False,
    ),
    # Configuration.
    Forbidden("promote a version", "UPDATE templates SET active_version_id = active_version_id"),
    Forbidden("change a preset", "UPDATE template_version_presets SET desired_instances = 1"),
    Forbidden(
        "store a status directly", "UPDATE template_version_presets SET prebuild_status = 'healthy'"
    ),
    Forbidden(
        "invalidate directly", "UPDATE template_version_presets SET last_invalidated_at = now()"
    ),
    Forbidden("wipe settings", "DELETE FROM site_configs"),
    Forbidden("write settings directly", "UPDATE site_configs SET value = value"),
    # Schema and session.
    Forbidden("create a temporary table", "CREATE TEMP TABLE probe (id int)"),
    Forbidden("create in Coder's schema", "CREATE TABLE probe (id int)"),
    Forbidden("create in prebuildd's schema", "CREATE TABLE prebuildd.probe (id int)"),
    Forbidden("truncate", "TRUNCATE workspace_builds", control=False),
    Forbidden(
        "drop a trigger", "DROP TRIGGER prebuildd_job_status ON provisioner_jobs", control=False
    ),
    # prebuildd's internal functions: they write without the entry points' checks.
    Forbidden(
        "queue builds on any workspace",
        "SELECT prebuildd.queue_builds('delete', false, now(), NULL,"
        " ARRAY[%(users_running)s]::uuid[], ARRAY[%(version)s]::uuid[], ARRAY[NULL]::uuid[],"
        " ARRAY[9], ARRAY[NULL]::uuid[], '{}'::jsonb)",
    ),
    Forbidden("call prebuilds_user_id", "SELECT prebuildd.prebuilds_user_id()"),
    Forbidden("compute job tags", "SELECT prebuildd.job_tags('{}', '{}', gen_random_uuid())"),
]


def _seed_params(statement: str, seed: Seed) -> dict[str, object] | None:
    names = set(re.findall(r"%\((\w+)\)s", statement))
    return {name: getattr(seed, name) for name in names} or None


@pytest.mark.parametrize("forbidden", FORBIDDEN, ids=[f.label for f in FORBIDDEN])
def test_role_is_refused(seed: Seed, forbidden: Forbidden) -> None:
    params = _seed_params(forbidden.statement, seed)
    if forbidden.control:
        with _rolled_back(seed.owner_url) as owner:
            owner.execute(forbidden.statement, params)
    with _rolled_back(seed.role_url) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(forbidden.statement, params)


def test_role_cannot_claim_through_prebuildds_own_claim_query(seed: Seed) -> None:
    """`prebuildd claim` is a development tool: as the role it is refused, not half-done."""
    params = claim_params(preset_id=seed.active, user_id=seed.user, name="claimed", now=None)
    with _rolled_back(seed.owner_url) as owner:
        (row,) = owner.execute(query("claim_prebuild"), params).fetchall()
        assert row[2] is not None, "as the owner the same statement claims a prebuild"
    with _rolled_back(seed.role_url) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(query("claim_prebuild"), params)


# ---------------------------------------------------------------------------------------------
# The write functions, called on users' rows, do nothing
# ---------------------------------------------------------------------------------------------

USERS_ROWS: LiteralString = """
SELECT
    (SELECT count(*) FROM workspace_builds WHERE workspace_id = ANY(%(ids)s)),
    (SELECT count(*) FROM workspaces WHERE id = ANY(%(ids)s) AND deleted),
    (SELECT job_status::text FROM provisioner_jobs WHERE id = %(job)s)
"""


# One build each, none deleted, the user's queued job still pending.
UNTOUCHED = (3, 0, "pending")


def _users_rows(conn: Conn, seed: Seed) -> tuple[Any, ...]:
    ids = [seed.users_running, seed.users_pending, seed.users_claimed]
    row = conn.execute(USERS_ROWS, {"ids": ids, "job": seed.users_pending_job}).fetchone()
    assert row is not None
    return tuple(row)


def test_delete_function_skips_users_workspaces(seed: Seed) -> None:
    with _rolled_back(seed.role_url) as conn:
        rows = conn.execute(
            query("delete_prebuilds"),
            {
                "workspace_ids": [seed.users_running, seed.users_claimed, seed.users_pending],
                "now": datetime.now(UTC),
                "trace_metadata": Jsonb({}),
                "workspace_tags": Jsonb({}),
            },
        ).fetchall()
        assert rows == []
        # Read in the same transaction (the role may read these columns): nothing changed.
        assert _users_rows(conn, seed) == UNTOUCHED


def test_cancel_function_leaves_users_jobs_alone(seed: Seed) -> None:
    """The old preset has a queued create of the prebuilds user and one of a user: only the
    former is the function's."""
    with _rolled_back(seed.role_url) as conn:
        rows = conn.execute(
            query("cancel_pending_prebuilds"), {"preset_id": seed.old, "now": datetime.now(UTC)}
        ).fetchall()
        assert len(rows) == 1 and rows[0][0] != seed.users_pending
        assert _users_rows(conn, seed) == UNTOUCHED


@pytest.mark.parametrize(
    ("preset", "version"),
    [("old", "old_version"), ("unwanted", "version"), ("active", "old_version")],
    ids=["inactive-version", "preset-without-prebuilds", "version-not-the-presets"],
)
def test_create_function_refuses_what_the_planner_would_never_create(
    seed: Seed, preset: str, version: str
) -> None:
    with _rolled_back(seed.role_url) as conn:
        rows = conn.execute(
            query("create_prebuilds"),
            {
                "preset_id": getattr(seed, preset),
                "template_version_id": getattr(seed, version),
                "count": 5,
                "now": datetime.now(UTC),
                "trace_metadata": Jsonb({}),
                "workspace_tags": Jsonb({}),
            },
        ).fetchall()
    assert rows == []


def test_created_prebuilds_always_belong_to_the_prebuilds_user(seed: Seed) -> None:
    with _rolled_back(seed.role_url) as conn:
        rows = conn.execute(
            query("create_prebuilds"),
            {
                "preset_id": seed.active,
                "template_version_id": seed.version,
                "count": 3,
                "now": datetime.now(UTC),
                "trace_metadata": Jsonb({}),
                "workspace_tags": Jsonb({}),
            },
        ).fetchall()
        ids = [r[0] for r in rows]
        conn.commit()
    try:
        with psycopg.connect(seed.owner_url) as owner:
            owners = owner.execute(
                "SELECT DISTINCT w.owner_id, b.initiator_id, j.initiator_id FROM workspaces w"
                " JOIN workspace_builds b ON b.workspace_id = w.id"
                " JOIN provisioner_jobs j ON j.id = b.job_id WHERE w.id = ANY(%s)",
                (ids,),
            ).fetchall()
        assert len(ids) == 3
        assert owners == [(PREBUILDS_USER_ID, PREBUILDS_USER_ID, PREBUILDS_USER_ID)]
    finally:
        with psycopg.connect(seed.owner_url) as owner:
            owner.execute(
                "DELETE FROM provisioner_jobs j USING workspace_builds b"
                " WHERE b.job_id = j.id AND b.workspace_id = ANY(%s)",
                (ids,),
            )
            owner.execute("DELETE FROM workspaces WHERE id = ANY(%s)", (ids,))


def test_status_function_takes_only_prebuild_statuses(seed: Seed) -> None:
    with _rolled_back(seed.role_url) as conn, pytest.raises(errors.InvalidTextRepresentation):
        conn.execute(query("set_preset_status"), {"preset_id": seed.active, "status": "deleted"})


def test_notify_function_sends_nothing_for_a_healthy_preset(seed: Seed) -> None:
    delivery = {"default_method": "smtp", "inbox": True}
    with _rolled_back(seed.role_url) as conn:
        params = {"preset_id": seed.active, **delivery}
        rows = conn.execute(query("notify_hard_limited"), params).fetchall()
        assert rows == []
        # Positive control on the same connection: the hard-limited preset does notify.
        params = {"preset_id": seed.limited, **delivery}
        rows = conn.execute(query("notify_hard_limited"), params).fetchall()
        assert {r[0] for r in rows} == {seed.admin}


# ---------------------------------------------------------------------------------------------
# search_path: pinned, pg_temp last
# ---------------------------------------------------------------------------------------------


def test_functions_pin_their_search_path_with_pg_temp_last(seed: Seed) -> None:
    with psycopg.connect(seed.owner_url) as conn:
        rows = conn.execute(
            "SELECT p.proname, p.prosecdef, p.proconfig FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'prebuildd' AND p.prorettype <> 'trigger'::regtype"
        ).fetchall()
    config = {name: cfg for name, _, cfg in rows}
    definers = {name for name, definer, _ in rows if definer}
    assert definers >= ENTRY_POINTS
    assert not definers & {"queue_builds", "prebuilds_user_id", "job_tags"}, "internal helpers"
    # Every function that reads tables as its owner: Coder's schema, then pg_temp, LAST.
    # (pg_catalog is searched first whether it is listed or not; listing it is allowed.)
    for name in definers | {"queue_builds", "job_tags"}:
        paths = [
            c.replace("search_path=pg_catalog, ", "search_path=")
            for c in config[name] or []
            if c.startswith("search_path=")
        ]
        assert paths == ["search_path=public, pg_temp"], name
    # The one exception reads no table (and must stay inlinable: no SET clause).
    assert config["prebuilds_user_id"] is None


SHADOWS: LiteralString = """
CREATE TEMP TABLE templates (LIKE public.templates);
CREATE TEMP TABLE workspaces (LIKE public.workspaces);
CREATE TEMP TABLE workspace_builds (LIKE public.workspace_builds);
CREATE TEMP TABLE provisioner_jobs (LIKE public.provisioner_jobs);
"""
UNPINNED_PROBE: LiteralString = """
CREATE FUNCTION prebuildd.unpinned_probe() RETURNS bigint LANGUAGE sql SECURITY DEFINER
SET search_path = public AS 'SELECT count(*) FROM templates'
"""


def test_temporary_tables_cannot_shadow_coders_tables(seed: Seed) -> None:
    """A session with temporary tables named like Coder's (the owner's here: the role may not
    create any) still writes Coder's tables through the functions."""
    with _rolled_back(seed.owner_url) as conn:
        conn.execute(SHADOWS)
        # Control: without pg_temp placed last, the temporary table wins.
        conn.execute(UNPINNED_PROBE)
        assert conn.execute("SELECT prebuildd.unpinned_probe()").fetchone() == (0,)
        rows = conn.execute(
            query("create_prebuilds"),
            {
                "preset_id": seed.active,
                "template_version_id": seed.version,
                "count": 2,
                "now": datetime.now(UTC),
                "trace_metadata": Jsonb({}),
                "workspace_tags": Jsonb({}),
            },
        ).fetchall()
        assert len(rows) == 2
        real = conn.execute(
            "SELECT count(*) FROM public.workspace_builds WHERE workspace_id = ANY(%s)",
            ([r[0] for r in rows],),
        ).fetchone()
        assert real == (2,)
        shadows = conn.execute(
            "SELECT (SELECT count(*) FROM pg_temp.workspaces)"
            " + (SELECT count(*) FROM pg_temp.workspace_builds)"
            " + (SELECT count(*) FROM pg_temp.provisioner_jobs)"
        ).fetchone()
        assert shadows == (0,)


# ---------------------------------------------------------------------------------------------
# Coder releases before v2.29 have no last_invalidated_at
# ---------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("cli_logging")
def test_invalidate_without_the_column_says_which_release_it_needs(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(db_url) as conn:
        preset = make_preset(conn, make_template(conn, make_org(conn)).version_id)
        conn.execute("ALTER TABLE template_version_presets DROP COLUMN last_invalidated_at CASCADE")
        conn.commit()
    apply_role_script(db_url)  # the script grants the column only where it exists
    with _login_role(db_url) as role:
        with (
            psycopg.connect(role) as conn,
            pytest.raises(errors.FeatureNotSupported, match="last_invalidated_at") as caught,
        ):
            conn.execute(
                query("invalidate_preset"), {"preset_id": preset, "now": datetime.now(UTC)}
            )
        diag = caught.value.diag
        assert diag.message_hint is not None and "v2.29" in diag.message_hint
        capsys.readouterr()
        assert main(["invalidate", "--preset", str(preset), "--database-url", role]) != 0
    assert "last_invalidated_at" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The whole job, as the role
# ---------------------------------------------------------------------------------------------


def test_sweeps_create_cancel_delete_store_statuses_and_notify_as_the_role(
    conn: Conn, role_url: str
) -> None:
    org = make_org(conn)
    admin = make_user(conn)
    conn.execute("UPDATE users SET rbac_roles = '{template-admin}' WHERE id = %s", (admin,))
    # An active template with one running prebuild, wanting two.
    a = make_template(conn, org)
    a1 = make_preset(conn, a.version_id, desired=2, parameters={"region": "eu"})
    running = make_prebuild(conn, a1, created_at=datetime.now(UTC) - timedelta(hours=2))
    # Three failed creates in a row: the hard limit, and admins are told.
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
    assert _scalar(conn, NOTIFIED, admin) == 2  # e-mail and inbox

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
    # The delete build repeats the Terraform state the role itself cannot read.
    state = _scalar(
        conn,
        "SELECT count(*) FROM workspace_builds d JOIN workspace_builds s"
        " ON s.workspace_id = d.workspace_id AND s.build_number = 1"
        " WHERE d.workspace_id = %s AND d.transition = 'delete'"
        " AND d.provisioner_state IS NOT DISTINCT FROM s.provisioner_state",
        running.workspace_id,
    )
    assert state == 1

    totals = anyio.run(_metrics_rows, role_url)
    assert totals[a1] >= 2


async def _metrics_rows(url: str) -> dict[UUID, int]:
    async with await psycopg.AsyncConnection.connect(url) as aconn:
        rows = await store.read_metrics_rows(aconn)
        paused = await store.read_paused(aconn)
    assert paused is False
    return {row.preset_id: row.created_total for row in rows}


def test_hard_limit_notification_as_the_role_on_coders_schema(
    conn: Conn, db_url: str, role_url: str
) -> None:
    """The role queues Coder's notification for template admins, also through Coder's own
    enqueue trigger (inhibit_enqueue_if_disabled, in the subset as in Coder), which reads
    tables the role has no grant on: the function reads and writes as its owner, so the
    trigger runs with the owner's privileges too. The recipients' tables (users, organization
    members, preferences) stay unreadable to the role."""
    org = make_org(conn)
    admin = make_user(conn)
    conn.execute("UPDATE users SET rbac_roles = '{template-admin}' WHERE id = %s", (admin,))
    tpl = make_template(conn, org)
    preset = make_preset(conn, tpl.version_id, desired=1, status="hard_limited")
    conn.commit()
    apply_role_script(db_url)  # applied again (an upgrade): still no grant on those tables
    params = {"preset_id": preset, "default_method": "smtp", "inbox": True}

    with psycopg.connect(role_url) as role:
        tables = (
            "notification_preferences",
            "notification_messages",
            "users",
            "organization_members",
        )
        for table in tables:
            held = role.execute(
                "SELECT has_table_privilege(current_user, %s, 'SELECT')"
                " OR has_any_column_privilege(current_user, %s, 'SELECT')",
                (table, table),
            ).fetchone()
            assert held == (False,), table
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
    assert main(["invalidate", "--preset", str(uuid4()), *url]) != 0

    capsys.readouterr()
    assert main(["status", *url]) == 0
    assert "lp-commands" in capsys.readouterr().out
    assert main(["reconcile", "--once", "--dry-run", *url]) == 0
    value = _scalar(conn, "SELECT value FROM site_configs WHERE key = 'prebuilds_settings'")
    assert '"reconciliation_paused": false' in value


@pytest.mark.usefixtures("cli_logging")
def test_status_as_the_role_reads_who_is_busy_from_pg_locks(
    conn: Conn, db_url: str, role_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status` takes no lock and reads pg_locks instead, which the role may do without any
    grant: a template a replica holds is shown busy, Coder's running loop is reported."""
    tpl = make_template(conn, make_org(conn), name="lp-busy")
    make_preset(conn, tpl.version_id, desired=1)
    conn.commit()
    url = ["--database-url", role_url]
    with psycopg.connect(role_url) as replica:
        assert replica.execute(query("lock_templates"), {"template_ids": [tpl.id]}).fetchall()
        capsys.readouterr()
        assert main(["status", *url]) == 0
        row = next(line for line in capsys.readouterr().out.splitlines() if "lp-busy" in line)
        assert row.split()[-1] == "busy"
        replica.rollback()
        # Coder's loop, as the owner: lock 7 held exclusively.
        assert replica.execute("SELECT pg_try_advisory_xact_lock(7::bigint)").fetchone() == (True,)
        assert main(["status", *url]) == 0
        out = capsys.readouterr().out
        assert "lp-busy" in out and "Coder's own reconciliation loop is running" in out
        replica.rollback()


@pytest.mark.anyio
async def test_event_driven_service_as_the_role(
    db_url: str, role_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """LISTEN, the startup sweep, events from Coder's writes and from the role's own writes,
    a periodic sweep that demonstrably ran and acted, the metrics loop and both probes, all
    as the role."""
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
        # The role reads the catalog's triggers on Coder's tables (not on its own schema,
        # which its search_path names first) and finds every one of sql/triggers/.
        await eventually(lambda: _above(_sample_total(service, "prebuildd_event_triggers_ok"), 0))

        # A promotion: Coder's write, announced by the triggers.
        with psycopg.connect(db_url) as owner:
            v2 = make_version(owner, tpl, active=True)
            new = make_preset(owner, v2, desired=1)
            owner.commit()
        await eventually(lambda: _count(db_url, CANCELED_AND_RETIRED, old, 2))
        await eventually(lambda: _count(db_url, PENDING_CREATES, new, 1))

        # A change no event announces (this session does not fire triggers), then a periodic
        # sweep -- counted by its trigger -- reconciling it as the role. (A reconcile that an
        # event of the service's own writes started may get there first: both are the role.)
        sweeps_before = _sweep_reconciles(service)
        with psycopg.connect(db_url) as owner:
            owner.execute("SET session_replication_role = replica")
            owner.execute(
                "UPDATE template_version_presets SET desired_instances = 2 WHERE id = %s", (new,)
            )
            owner.commit()
        await eventually(lambda: _count(db_url, PENDING_CREATES, new, 2))
        await eventually(lambda: _above(_sweep_reconciles(service), sweeps_before))
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


async def _above(value: float, floor: float) -> bool:
    return value > floor


def _sweep_reconciles(service: Any) -> float:
    value = service.metrics.registry.get_sample_value(
        "prebuildd_reconciles_total", {"trigger": "sweep"}
    )
    return float(value or 0.0)


def _sample_total(service: Any, metric: str) -> float:
    total = 0.0
    for family in service.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == metric:
                total += sample.value
    return total
