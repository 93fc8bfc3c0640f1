"""The Coder subset, introspected, against a list written from Coder's dump.sql by hand; and
the contract between migrate.REQUIRED_COLUMNS and what production really runs.

The expectations below are deliberately not derived from sql/schema/coder_subset.sql: they are
what Coder's schema says for each included column (type as PostgreSQL's format_type() prints
it, and NOT NULL), so a drift in the subset file fails here.

REQUIRED_COLUMNS / REQUIRED_ENUM_LABELS are what `migrate` demands of a Coder database. The
tests at the end build a database with exactly those (tests/integration/_coder_schemas.py)
and run production there: every production query (EXPLAIN: parse analysis resolves every
column and enum literal), `migrate` itself (indexes, triggers, functions), and the service's
whole job end to end, which also executes the late-bound PL/pgSQL of the triggers and
functions. A query that needs one more column fails here, not on an operator's database.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString, cast
from uuid import UUID, uuid4

import psycopg
import pytest
from _coder_schemas import UNNAMEABLE_LABEL, EventInbox, required_only
from psycopg import sql
from psycopg.types.json import Jsonb

from prebuildd.cli import EXIT_ERROR, EXIT_OK
from prebuildd.cli import main as cli_main
from prebuildd.migrate import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    REQUIRED_ENUM_LABELS,
    find_absent_optional,
    find_missing,
    migrate,
)
from prebuildd.model import PREBUILDS_USER_ID, PrebuildStatus
from prebuildd.queries import parse_blocks, query, read_sql_file, sql_root

Conn = psycopg.Connection[Any]

TS = "timestamp with time zone"

# table -> "column type" lines; a trailing " !" marks NOT NULL.
EXPECTED_COLUMNS: dict[str, str] = {
    "organizations": f"""
        id uuid !
        name text !
        description text !
        created_at {TS} !
        updated_at {TS} !
        is_default boolean !
        display_name text !
        icon text !
        deleted boolean !
    """,
    "users": f"""
        id uuid !
        email text !
        username text !
        hashed_password bytea !
        created_at {TS} !
        updated_at {TS} !
        status user_status !
        rbac_roles text[] !
        login_type login_type !
        avatar_url text !
        deleted boolean !
        last_seen_at timestamp without time zone !
        quiet_hours_schedule text !
        name text !
        github_com_user_id bigint
        hashed_one_time_passcode bytea
        one_time_passcode_expires_at {TS}
        is_system boolean !
        is_service_account boolean !
    """,
    "site_configs": """
        key character varying(256) !
        value text !
    """,
    "templates": f"""
        id uuid !
        created_at {TS} !
        updated_at {TS} !
        organization_id uuid !
        deleted boolean !
        name character varying(64) !
        provisioner provisioner_type !
        active_version_id uuid !
        description character varying(128) !
        default_ttl bigint !
        created_by uuid !
        icon character varying(256) !
        user_acl jsonb !
        group_acl jsonb !
        display_name character varying(64) !
        allow_user_cancel_workspace_jobs boolean !
        allow_user_autostart boolean !
        allow_user_autostop boolean !
        failure_ttl bigint !
        time_til_dormant bigint !
        time_til_dormant_autodelete bigint !
        autostop_requirement_days_of_week smallint !
        autostop_requirement_weeks bigint !
        autostart_block_days_of_week smallint !
        require_active_version boolean !
        deprecated text !
        activity_bump bigint !
        use_classic_parameter_flow boolean !
        disable_module_cache boolean !
    """,
    "template_versions": f"""
        id uuid !
        template_id uuid
        organization_id uuid !
        created_at {TS} !
        updated_at {TS} !
        name character varying(64) !
        readme character varying(1048576) !
        job_id uuid !
        created_by uuid !
        external_auth_providers jsonb !
        message character varying(1048576) !
        archived boolean !
        source_example_id text
        has_ai_task boolean
        has_external_agent boolean
    """,
    "template_version_parameters": """
        template_version_id uuid !
        name text !
        description text !
        type text !
        mutable boolean !
        default_value text !
        icon text !
        options jsonb !
        validation_regex text !
        validation_min integer
        validation_max integer
        validation_error text !
        validation_monotonic text !
        required boolean !
        display_name text !
        display_order integer !
        ephemeral boolean !
        form_type parameter_form_type !
    """,
    "template_version_workspace_tags": """
        template_version_id uuid !
        key text !
        value text !
    """,
    "template_version_presets": f"""
        id uuid !
        template_version_id uuid !
        name text !
        created_at {TS} !
        desired_instances integer
        invalidate_after_secs integer
        prebuild_status prebuild_status !
        scheduling_timezone text !
        is_default boolean !
        description character varying(128) !
        icon character varying(256) !
        last_invalidated_at {TS}
    """,
    "template_version_preset_parameters": """
        id uuid !
        template_version_preset_id uuid !
        name text !
        value text !
    """,
    "template_version_preset_prebuild_schedules": """
        id uuid !
        preset_id uuid !
        cron_expression text !
        desired_instances integer !
    """,
    "provisioner_jobs": f"""
        id uuid !
        created_at {TS} !
        updated_at {TS} !
        started_at {TS}
        canceled_at {TS}
        completed_at {TS}
        error text
        organization_id uuid !
        initiator_id uuid !
        provisioner provisioner_type !
        storage_method provisioner_storage_method !
        type provisioner_job_type !
        input jsonb !
        worker_id uuid
        file_id uuid !
        tags jsonb !
        error_code text
        trace_metadata jsonb
        job_status provisioner_job_status !
        logs_length integer !
        logs_overflowed boolean !
    """,
    "workspaces": f"""
        id uuid !
        created_at {TS} !
        updated_at {TS} !
        owner_id uuid !
        organization_id uuid !
        template_id uuid !
        deleted boolean !
        name character varying(64) !
        autostart_schedule text
        ttl bigint
        last_used_at {TS} !
        dormant_at {TS}
        deleting_at {TS}
        automatic_updates automatic_updates !
        favorite boolean !
        next_start_at {TS}
        group_acl jsonb !
        user_acl jsonb !
    """,
    "workspace_builds": f"""
        id uuid !
        created_at {TS} !
        updated_at {TS} !
        workspace_id uuid !
        template_version_id uuid !
        build_number integer !
        transition workspace_transition !
        initiator_id uuid !
        provisioner_state bytea
        job_id uuid !
        deadline {TS} !
        reason build_reason !
        daily_cost integer !
        max_deadline {TS} !
        template_version_preset_id uuid
        has_ai_task boolean
        has_external_agent boolean
    """,
    "workspace_build_parameters": """
        workspace_build_id uuid !
        name text !
        value text !
    """,
    "workspace_resources": f"""
        id uuid !
        created_at {TS} !
        job_id uuid !
        transition workspace_transition !
        type character varying(192) !
        name character varying(64) !
        hide boolean !
        icon character varying(256) !
        instance_type character varying(256)
        daily_cost integer !
        module_path text
    """,
    "workspace_agents": f"""
        id uuid !
        created_at {TS} !
        updated_at {TS} !
        name character varying(64) !
        first_connected_at {TS}
        last_connected_at {TS}
        disconnected_at {TS}
        resource_id uuid !
        auth_token uuid !
        auth_instance_id character varying
        architecture character varying(64) !
        environment_variables jsonb
        operating_system character varying(64) !
        instance_metadata jsonb
        resource_metadata jsonb
        directory character varying(4096) !
        version text !
        last_connected_replica_id uuid
        connection_timeout_seconds integer !
        troubleshooting_url text !
        motd_file text !
        lifecycle_state workspace_agent_lifecycle_state !
        expanded_directory character varying(4096) !
        logs_length integer !
        logs_overflowed boolean !
        started_at {TS}
        ready_at {TS}
        api_version text !
        display_order integer !
        parent_id uuid
        deleted boolean !
    """,
    "notification_templates": """
        id uuid !
        name text !
        title_template text !
        body_template text !
        actions jsonb
        group text
        method notification_method
        kind notification_template_kind !
        enabled_by_default boolean !
    """,
    "notification_messages": f"""
        id uuid !
        notification_template_id uuid !
        user_id uuid !
        method notification_method !
        status notification_message_status !
        status_reason text
        created_by text !
        payload jsonb !
        attempt_count integer
        targets uuid[]
        created_at {TS} !
        updated_at {TS}
        leased_until {TS}
        next_retry_after {TS}
        queued_seconds double precision
        dedupe_hash text
    """,
    "notification_preferences": f"""
        user_id uuid !
        notification_template_id uuid !
        disabled boolean !
        created_at {TS} !
        updated_at {TS} !
    """,
    "organization_members": f"""
        user_id uuid !
        organization_id uuid !
        created_at {TS} !
        updated_at {TS} !
        roles text[] !
    """,
}

EXPECTED_VIEWS: dict[str, str] = {
    "workspace_latest_builds": f"""
        id uuid
        workspace_id uuid
        template_version_id uuid
        job_id uuid
        template_version_preset_id uuid
        transition workspace_transition
        created_at {TS}
        job_status provisioner_job_status
    """,
    "workspace_prebuilds": f"""
        id uuid
        name character varying(64)
        template_id uuid
        created_at {TS}
        ready boolean
        current_preset_id uuid
    """,
    "workspace_prebuild_builds": """
        id uuid
        workspace_id uuid
        template_version_id uuid
        transition workspace_transition
        job_id uuid
        template_version_preset_id uuid
        build_number integer
    """,
}


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


EXPECTED_ENUMS: dict[str, tuple[str, ...]] = {
    "login_type": _words("password github oidc token none oauth2_provider_app"),
    "user_status": _words("active suspended dormant"),
    "automatic_updates": _words("always never"),
    "build_reason": _words(
        "initiator autostart autostop dormancy failedstop autodelete dashboard cli ssh_connection "
        "vscode_connection jetbrains_connection task_auto_pause task_manual_pause task_resume"
    ),
    "workspace_transition": _words("start stop delete"),
    "provisioner_job_status": _words("pending running succeeded canceling canceled failed unknown"),
    "provisioner_job_type": _words(
        "template_version_import workspace_build template_version_dry_run"
    ),
    "provisioner_type": _words("echo terraform"),
    "provisioner_storage_method": _words("file"),
    "prebuild_status": _words("healthy hard_limited validation_failed"),
    "parameter_form_type": (
        "", "error", "radio", "dropdown", "input", "textarea", "slider", "checkbox", "switch",
        "tag-select", "multi-select",
    ),
    "workspace_agent_lifecycle_state": _words(
        "created starting start_timeout start_error ready shutting_down shutdown_timeout "
        "shutdown_error off"
    ),
    "notification_method": _words("smtp webhook inbox"),
    "notification_message_status": _words(
        "pending leased sent permanent_failure temporary_failure unknown inhibited"
    ),
    "notification_template_kind": _words("system custom"),
}

# (table, column) -> (referenced table, ON DELETE action as pg_constraint.confdeltype).
EXPECTED_FOREIGN_KEYS: dict[tuple[str, str], tuple[str, str]] = {
    ("templates", "organization_id"): ("organizations", "c"),
    ("templates", "created_by"): ("users", "r"),
    ("template_versions", "template_id"): ("templates", "c"),
    ("template_versions", "organization_id"): ("organizations", "c"),
    ("template_versions", "created_by"): ("users", "r"),
    ("template_version_presets", "template_version_id"): ("template_versions", "c"),
    ("template_version_parameters", "template_version_id"): ("template_versions", "c"),
    ("template_version_workspace_tags", "template_version_id"): ("template_versions", "c"),
    ("template_version_preset_parameters", "template_version_preset_id"): (
        "template_version_presets",
        "c",
    ),
    ("template_version_preset_prebuild_schedules", "preset_id"): ("template_version_presets", "c"),
    ("provisioner_jobs", "organization_id"): ("organizations", "c"),
    ("workspaces", "organization_id"): ("organizations", "r"),
    ("workspaces", "owner_id"): ("users", "r"),
    ("workspaces", "template_id"): ("templates", "r"),
    ("workspace_builds", "job_id"): ("provisioner_jobs", "c"),
    ("workspace_builds", "template_version_id"): ("template_versions", "c"),
    ("workspace_builds", "template_version_preset_id"): ("template_version_presets", "n"),
    ("workspace_builds", "workspace_id"): ("workspaces", "c"),
    ("workspace_build_parameters", "workspace_build_id"): ("workspace_builds", "c"),
    ("workspace_resources", "job_id"): ("provisioner_jobs", "c"),
    ("workspace_agents", "parent_id"): ("workspace_agents", "c"),
    ("workspace_agents", "resource_id"): ("workspace_resources", "c"),
    ("notification_messages", "notification_template_id"): ("notification_templates", "c"),
    ("notification_messages", "user_id"): ("users", "c"),
    ("notification_preferences", "notification_template_id"): ("notification_templates", "c"),
    ("notification_preferences", "user_id"): ("users", "c"),
    ("organization_members", "organization_id"): ("organizations", "c"),
    ("organization_members", "user_id"): ("users", "c"),
}

# Unique constraints and indexes writers rely on (ON CONFLICT, duplicate detection).
EXPECTED_UNIQUE = {
    "workspace_builds_job_id_key",
    "workspace_builds_workspace_id_build_number_key",
    "workspace_build_parameters_workspace_build_id_name_key",
    "template_versions_template_id_name_key",
    "template_version_parameters_template_version_id_name_key",
    "template_version_workspace_tags_template_version_id_key_key",
    "site_configs_key_key",
    "idx_unique_preset_name",
    "idx_template_version_presets_default",
    "workspaces_owner_id_lower_idx",
    "templates_organization_id_name_idx",
    "idx_users_username",
    "notification_messages_dedupe_hash_idx",
}


def _parse(spec: str) -> list[tuple[str, str, bool]]:
    rows = []
    for line in spec.strip().splitlines():
        words = line.split()
        not_null = words[-1] == "!"
        if not_null:
            words = words[:-1]
        rows.append((words[0], " ".join(words[1:]), not_null))
    return rows


def _columns(conn: Conn, relkinds: str) -> dict[str, list[tuple[str, str, bool]]]:
    rows = conn.execute(
        """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind = ANY(%s::"char"[])
          AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY c.relname, a.attnum
        """,
        (list(relkinds),),
    ).fetchall()
    found: dict[str, list[tuple[str, str, bool]]] = {}
    for table, column, type_, not_null in rows:
        found.setdefault(str(table), []).append((str(column), str(type_), bool(not_null)))
    return found


def test_tables_columns_types_and_not_null(conn: Conn) -> None:
    found = _columns(conn, "r")
    assert set(found) == set(EXPECTED_COLUMNS)
    for table, spec in EXPECTED_COLUMNS.items():
        assert found[table] == _parse(spec), table


def test_views_and_their_columns(conn: Conn) -> None:
    found = _columns(conn, "v")
    assert set(found) == set(EXPECTED_VIEWS)
    for view, spec in EXPECTED_VIEWS.items():
        # A view's columns carry no NOT NULL; compare names and types in order.
        assert [(c, t) for c, t, _ in found[view]] == [(c, t) for c, t, _ in _parse(spec)], view


def test_enums_and_their_labels_in_order(conn: Conn) -> None:
    rows = conn.execute(
        """
        SELECT t.typname, array_agg(e.enumlabel::text ORDER BY e.enumsortorder)
        FROM pg_type t
        JOIN pg_enum e ON e.enumtypid = t.oid
        JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = 'public'
        GROUP BY t.typname
        """
    ).fetchall()
    found = {str(name): tuple(cast(list[str], labels)) for name, labels in rows}
    assert found == EXPECTED_ENUMS


def test_foreign_keys_match_coder(conn: Conn) -> None:
    rows = conn.execute(
        """
        SELECT src.relname, a.attname, dst.relname, con.confdeltype
        FROM pg_constraint con
        JOIN pg_class src ON src.oid = con.conrelid
        JOIN pg_class dst ON dst.oid = con.confrelid
        JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = con.conkey[1]
        JOIN pg_namespace n ON n.oid = src.relnamespace
        WHERE con.contype = 'f' AND n.nspname = 'public'
        """
    ).fetchall()
    found = {(str(t), str(c)): (str(ref), str(action)) for t, c, ref, action in rows}
    assert found == EXPECTED_FOREIGN_KEYS


def test_unique_constraints_writers_rely_on(conn: Conn) -> None:
    rows = conn.execute(
        "SELECT indexrelid::regclass::text FROM pg_index WHERE indisunique AND NOT indisprimary"
    ).fetchall()
    assert {str(name) for (name,) in rows} >= EXPECTED_UNIQUE


def test_job_status_is_a_stored_generated_column(conn: Conn) -> None:
    row = conn.execute(
        """
        SELECT a.attgenerated
        FROM pg_attribute a
        WHERE a.attrelid = 'provisioner_jobs'::regclass AND a.attname = 'job_status'
        """
    ).fetchone()
    assert row == ("s",)


@pytest.mark.parametrize(
    ("table", "column", "default"),
    [
        ("template_version_presets", "prebuild_status", "'healthy'::prebuild_status"),
        ("template_version_presets", "scheduling_timezone", "''::text"),
        ("template_version_presets", "invalidate_after_secs", "0"),
        ("templates", "deprecated", "''::text"),
        ("workspaces", "automatic_updates", "'never'::automatic_updates"),
        ("workspace_builds", "reason", "'initiator'::build_reason"),
        ("workspace_agents", "lifecycle_state", "'created'::workspace_agent_lifecycle_state"),
        ("provisioner_jobs", "tags", """'{"scope": "organization"}'::jsonb"""),
    ],
)
def test_defaults_writers_rely_on(conn: Conn, table: str, column: str, default: str) -> None:
    row = conn.execute(
        """
        SELECT pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attrdef d
        JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
        WHERE d.adrelid = %s::regclass AND a.attname = %s
        """,
        (table, column),
    ).fetchone()
    assert row == (default,)


def test_prebuilds_system_user_row(conn: Conn) -> None:
    row = conn.execute(
        "SELECT username, is_system, login_type::text, status::text, deleted FROM users "
        "WHERE id = %s",
        (PREBUILDS_USER_ID,),
    ).fetchone()
    assert row == ("prebuilds", True, "none", "active", False)


def test_required_and_optional_columns_are_in_the_subset(conn: Conn) -> None:
    """The subset holds everything production needs (and may hold more, for dev tools)."""
    found = _columns(conn, "rv")
    introspected = {(t, c) for t, cols in found.items() for c, _, _ in cols}
    required = {(t, c) for t, cols in REQUIRED_COLUMNS.items() for c in cols}
    optional = {(t, c) for t, cols in OPTIONAL_COLUMNS.items() for c in cols}
    assert required <= introspected, required - introspected
    assert optional <= introspected, optional - introspected
    assert not required & optional
    assert find_missing(conn) == ()
    assert find_absent_optional(conn) == ()


def test_required_enum_labels_are_in_the_subset_and_cover_what_the_service_writes() -> None:
    for type_name, labels in REQUIRED_ENUM_LABELS.items():
        assert set(labels) <= set(EXPECTED_ENUMS[type_name]), type_name
    # set_preset_status binds these values as parameters: no query text names them.
    assert set(REQUIRED_ENUM_LABELS["prebuild_status"]) == {s.value for s in PrebuildStatus}


# ---------------------------------------------------------------------------------------------
# Production needs nothing beyond REQUIRED_COLUMNS / REQUIRED_ENUM_LABELS
# ---------------------------------------------------------------------------------------------

# Files of sql/queries/ run in production (`run`, `reconcile`, `status`, `pause`, `resume`,
# `invalidate`), and files only `migrate` or the development tools run, with why.
PRODUCTION_FILES = {
    "snapshot.sql",
    "demand.sql",
    "actions.sql",
    "admin.sql",
    "health.sql",
    "listener.sql",
    "notifications.sql",
    "throttle.sql",
}
NOT_PRODUCTION_FILES = {
    "migrate.sql": "catalog queries of `migrate` itself (they name no Coder column)",
    "claim.sql": "`prebuildd claim` is a development tool: Coder claims prebuilds",
    "provisioner.sql": "the simulated provisioner stands in for Coder's provisioners",
    "seed.sql": "Coder rows for tests and `prebuildd demo` (the builder in sql/seed/)",
}
# Production queries that write an OPTIONAL_COLUMNS column, so they cannot work without it:
# on such a schema they must fail on that column, not on any other.
OPTIONAL_WRITES = {"invalidate_preset": "template_version_presets.last_invalidated_at"}


def _query_files() -> set[str]:
    return {e.name for e in (sql_root() / "queries").iterdir() if e.name.endswith(".sql")}


def _production_queries() -> list[str]:
    names: list[str] = []
    for file in sorted(PRODUCTION_FILES & _query_files()):
        for name, text in parse_blocks(read_sql_file("queries", file), file).items():
            # LISTEN takes no parameters and cannot be EXPLAINed; the end-to-end test
            # below listens for real.
            if not re.search(r"^\s*LISTEN\b", text, re.MULTILINE | re.IGNORECASE):
                names.append(name)
    return names


def test_every_query_file_is_classified_production_or_not() -> None:
    assert _query_files() == PRODUCTION_FILES | set(NOT_PRODUCTION_FILES)
    production = set(_production_queries())
    assert set(OPTIONAL_WRITES) <= production


def _sample(name: str) -> object:
    """A value of the right type for a query parameter, by its name."""
    fixed: dict[str, object] = {
        "count": 1,
        "hard_limit": 3,
        "backoff_lookback": timedelta(hours=1),
        "paused": True,
        "status": "healthy",
        "policies_only": False,
        "mode": "forecast",
        "min_instances": 0,
        "max_instances": 1,
        "trace_metadata": Jsonb({}),
        "workspace_tags": Jsonb({}),
        "default_method": "smtp",
        "inbox": True,
        # The cap on pending prebuild jobs (throttle.sql).
        "max_pending": 5,
        "create_tags": Jsonb([{}]),
        "take_locks": True,
        "preset_templates": [uuid4()],
        "tag_sets": ['{"scope": "organization", "owner": ""}'],
        "held": [1],
        "waiting_since": [datetime.now(UTC)],
        # execute_actions (actions.sql): the plan's actions as one JSON array.
        "actions": Jsonb([]),
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


def _required_only_database(url: str) -> str:
    """Coder's subset cut down to REQUIRED_COLUMNS / REQUIRED_ENUM_LABELS, then migrated."""
    required_only(url)
    report = migrate(url)
    assert not report.installed_base_schema
    assert report.absent_optional == ("template_version_presets.last_invalidated_at",)
    return url


@pytest.fixture
def required_only_url(empty_db_url: str) -> str:
    """A minimal database of the test's own (for a test that writes)."""
    return _required_only_database(empty_db_url)


@pytest.fixture(scope="module")
def shared_required_only_url(module_empty_db_url: str) -> str:
    """One minimal database for the read-only tests of this module (EXPLAIN writes
    nothing): building one costs ~0.5 s, once instead of once per query."""
    return _required_only_database(module_empty_db_url)


@pytest.mark.parametrize("name", _production_queries())
def test_production_query_needs_only_required_columns(
    shared_required_only_url: str, name: str
) -> None:
    """Parse analysis resolves every table, column and enum literal of a statement, so
    EXPLAIN fails on anything the database lacks, on every branch of the query."""
    text = str(query(name).as_string(None))
    params = {p: _sample(p) for p in set(re.findall(r"%\((\w+)\)s", text))} or None
    with psycopg.connect(shared_required_only_url, autocommit=True) as conn:
        if name not in OPTIONAL_WRITES:
            conn.execute(sql.SQL("EXPLAIN ") + query(name), params)
            return
        try:
            conn.execute(sql.SQL("EXPLAIN ") + query(name), params)
        except psycopg.errors.UndefinedColumn as exc:
            assert OPTIONAL_WRITES[name].split(".")[1] in str(exc)


def test_minimal_database_really_is_minimal(shared_required_only_url: str) -> None:
    """The shrinking did happen (the test above would pass vacuously on the full subset)."""
    with psycopg.connect(shared_required_only_url) as conn:
        found = _columns(conn, "r")
        kept = {(t, c) for t, cols in found.items() for c, _, _ in cols}
        required = {(t, c) for t, cols in REQUIRED_COLUMNS.items() for c in cols}
        # Coder computes job_status from these; they stay with it.
        generated_inputs = {("provisioner_jobs", "error")}
        assert kept == required | generated_inputs
        labels = conn.execute(
            "SELECT enum_range(NULL::workspace_transition)::text[],"
            " enum_range(NULL::provisioner_type)::text[]"
        ).fetchone()
        assert labels == (["start", "delete"], [UNNAMEABLE_LABEL])


# Rows of the minimal database: every required NOT NULL column given, nothing else named.
# Enum types prebuildd never names hold only UNNAMEABLE_LABEL there.
_ORG: LiteralString = "INSERT INTO organizations (id, name) VALUES (%(id)s, %(name)s)"
_ADMIN: LiteralString = """
INSERT INTO users (id, email, username, name, deleted, is_system, rbac_roles)
VALUES (%(id)s, 'admin@example.com', 'admin', 'Admin', false, false, ARRAY['template-admin'])
"""
# An organization's template admin: no site-level role, the organization's instead.
_ORG_ADMIN: LiteralString = """
WITH u AS (
    INSERT INTO users (id, email, username, name, deleted, is_system, rbac_roles)
    VALUES (%(id)s, 'org-admin@example.com', 'org-admin', '', false, false, '{}')
    RETURNING id
)
INSERT INTO organization_members (user_id, organization_id, roles)
SELECT u.id, %(org)s, ARRAY['organization-template-admin'] FROM u
"""
_JOB: LiteralString = """
INSERT INTO provisioner_jobs (
    id, created_at, updated_at, started_at, completed_at, error, organization_id,
    initiator_id, provisioner, storage_method, type, input, file_id, tags
)
VALUES (
    %(id)s, now(), now(), now(), now(), %(error)s, %(org)s, %(initiator)s,
    'minimal_db_only', 'minimal_db_only', 'workspace_build', '{}', gen_random_uuid(),
    '{"scope": "organization", "owner": ""}'
)
"""
_TEMPLATE: LiteralString = """
INSERT INTO templates (id, name, organization_id, active_version_id, deleted, deprecated,
                       provisioner)
VALUES (%(id)s, %(name)s, %(org)s, %(version)s, false, '', 'minimal_db_only')
"""
_VERSION: LiteralString = """
INSERT INTO template_versions (id, template_id, name, created_at, job_id)
VALUES (%(id)s, %(template)s, %(name)s, clock_timestamp(), %(job)s)
"""
_PRESET: LiteralString = """
INSERT INTO template_version_presets (id, template_version_id, name, desired_instances,
                                      invalidate_after_secs, scheduling_timezone,
                                      prebuild_status)
VALUES (%(id)s, %(version)s, %(name)s, %(desired)s, NULL, '', 'healthy')
"""
_WORKSPACE: LiteralString = """
INSERT INTO workspaces (id, created_at, updated_at, owner_id, organization_id, template_id,
                        deleted, name, last_used_at, automatic_updates, favorite)
VALUES (%(id)s, now(), now(), %(owner)s, %(org)s, %(template)s, false, %(name)s, now(),
        'never', false)
"""
_BUILD: LiteralString = """
INSERT INTO workspace_builds (id, created_at, updated_at, workspace_id, template_version_id,
                              build_number, transition, initiator_id, job_id, deadline,
                              max_deadline, reason, template_version_preset_id)
VALUES (gen_random_uuid(), now(), now(), %(workspace)s, %(version)s, 1, 'start',
        %(initiator)s, %(job)s, now(), now(), 'initiator', %(preset)s)
"""


class _MinimalWorld:
    """Builds rows on the minimal database with the statements above."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.org = uuid4()
        self.admin = uuid4()
        self.org_admin = uuid4()
        conn.execute(_ORG, {"id": self.org, "name": "minimal-org"})
        conn.execute(_ADMIN, {"id": self.admin})
        conn.execute(_ORG_ADMIN, {"id": self.org_admin, "org": self.org})

    def job(self, *, initiator: UUID, error: str | None = None) -> UUID:
        job = uuid4()
        self.conn.execute(
            _JOB, {"id": job, "error": error, "org": self.org, "initiator": initiator}
        )
        return job

    def template(self, name: str, *, import_job: bool = True) -> tuple[UUID, UUID]:
        template, version = uuid4(), uuid4()
        self.conn.execute(
            _TEMPLATE, {"id": template, "name": name, "org": self.org, "version": version}
        )
        self.version(template, version, import_job=import_job)
        return template, version

    def version(self, template: UUID, version: UUID, *, import_job: bool = True) -> UUID:
        job = self.job(initiator=self.admin) if import_job else uuid4()
        params = {"id": version, "template": template, "name": f"v-{version.hex[:6]}", "job": job}
        self.conn.execute(_VERSION, params)
        return version

    def preset(self, version: UUID, desired: int) -> UUID:
        preset = uuid4()
        params = {"id": preset, "version": version, "name": f"p-{preset.hex[:6]}"}
        self.conn.execute(_PRESET, {**params, "desired": desired})
        return preset

    def failed_prebuild(self, template: UUID, version: UUID, preset: UUID) -> None:
        workspace = uuid4()
        self.conn.execute(
            _WORKSPACE,
            {
                "id": workspace,
                "owner": PREBUILDS_USER_ID,
                "org": self.org,
                "template": template,
                "name": f"failed-{workspace.hex[:8]}",
            },
        )
        job = self.job(initiator=PREBUILDS_USER_ID, error="boom")
        self.conn.execute(
            _BUILD,
            {
                "workspace": workspace,
                "version": version,
                "initiator": PREBUILDS_USER_ID,
                "job": job,
                "preset": preset,
            },
        )


def _cli(url: str, *args: str) -> int:
    return cli_main([args[0], "--database-url", url, "--log-level", "warning", *args[1:]])


def _one(conn: Conn, statement: LiteralString, *params: object) -> object:
    row = conn.execute(statement, params).fetchone()
    assert row is not None
    return row[0]


_PREBUILD_JOBS: LiteralString = """
SELECT j.id, j.job_status::text, b.transition::text
FROM workspace_builds b
JOIN provisioner_jobs j ON j.id = b.job_id
WHERE b.template_version_preset_id = %s
ORDER BY b.build_number, j.id
"""


def test_production_end_to_end_on_required_columns_only(
    required_only_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The service's whole job on a database with nothing but REQUIRED_COLUMNS: creates,
    statuses, the hard-limit notification, deletes, cancels, status, pause/resume, and every
    trigger's event -- so the PL/pgSQL bodies run too."""
    url = required_only_url
    inbox = EventInbox(url)
    try:
        with psycopg.connect(url) as conn:
            world = _MinimalWorld(conn)
            a, a_v1 = world.template("alpha")
            a1 = world.preset(a_v1, desired=2)
            b, b_v1 = world.template("beta")
            b1 = world.preset(b_v1, desired=1)
            for _ in range(3):
                world.failed_prebuild(b, b_v1, b1)
            c, c_v1 = world.template("gamma", import_job=False)
            c1 = world.preset(c_v1, desired=1)
            conn.commit()

            # With the cap on pending prebuild jobs (room for alpha's 2): its functions read
            # Coder's columns too, and the job trigger probes the line below.
            assert _cli(url, "reconcile", "--once", "--max-pending-prebuild-jobs", "2") == EXIT_OK
            creates = conn.execute(_PREBUILD_JOBS, (a1,)).fetchall()
            assert [(status, transition) for _, status, transition in creates] == [
                ("pending", "start"),
                ("pending", "start"),
            ]
            status_of = "SELECT prebuild_status::text FROM template_version_presets WHERE id = %s"
            assert _one(conn, status_of, b1) == "hard_limited"
            assert _one(conn, status_of, c1) == "validation_failed"
            notified = "SELECT count(*) FROM notification_messages WHERE user_id = %s"
            assert _one(conn, notified, world.admin) == 2  # smtp and inbox
            assert _one(conn, notified, world.org_admin) == 2

            # Version 2 is promoted; then a provisioner finishes the first create, with a
            # ready agent (its success is not announced, its agent's readiness is); the
            # second stays queued.
            done, queued = creates[0][0], creates[1][0]
            a_v2 = world.version(a, uuid4())
            a2 = world.preset(a_v2, desired=1)
            conn.execute("UPDATE templates SET active_version_id = %s WHERE id = %s", (a_v2, a))
            conn.execute(
                "UPDATE provisioner_jobs SET started_at = now(), completed_at = now(),"
                " worker_id = gen_random_uuid() WHERE id = %s",
                (done,),
            )
            resource = uuid4()
            conn.execute(
                "INSERT INTO workspace_resources (id, job_id) VALUES (%s, %s)", (resource, done)
            )
            conn.execute(
                "INSERT INTO workspace_agents (resource_id, lifecycle_state, parent_id, deleted)"
                " VALUES (%s, 'ready', NULL, false)",
                (resource,),
            )
            conn.commit()

            assert _cli(url, "reconcile", "--once") == EXIT_OK
            after = conn.execute(_PREBUILD_JOBS, (a1,)).fetchall()
            by_job = {job: (status, transition) for job, status, transition in after}
            assert by_job[done] == ("succeeded", "start")
            assert by_job[queued] == ("canceled", "start")
            assert sorted(by_job.values()).count(("pending", "delete")) == 1
            assert [row[1:] for row in conn.execute(_PREBUILD_JOBS, (a2,)).fetchall()] == [
                ("pending", "start")
            ]

            capsys.readouterr()
            assert _cli(url, "status") == EXIT_OK
            assert "alpha" in capsys.readouterr().out
            setting = "SELECT value FROM site_configs WHERE key = 'prebuilds_settings'"
            assert _cli(url, "pause") == EXIT_OK
            assert json.loads(str(_one(conn, setting))) == {"reconciliation_paused": True}
            assert _cli(url, "resume") == EXIT_OK
            assert json.loads(str(_one(conn, setting))) == {"reconciliation_paused": False}
            conn.commit()
            # Writing an optional column cannot work without it: an error, nothing written.
            assert _cli(url, "invalidate", "--preset", str(a2)) == EXIT_ERROR

            # Coder's writes that the remaining triggers watch: a provisioner failing the new
            # version's create, ...
            conn.execute(
                "UPDATE provisioner_jobs SET started_at = now(), completed_at = now(),"
                " worker_id = gen_random_uuid(), error = 'boom' WHERE id IN ("
                " SELECT job_id FROM workspace_builds WHERE template_version_preset_id = %s)",
                (a2,),
            )
            conn.execute("UPDATE templates SET deprecated = 'old' WHERE id = %s", (c,))
            conn.execute(
                "INSERT INTO template_version_preset_prebuild_schedules"
                " (id, preset_id, cron_expression, desired_instances)"
                " VALUES (gen_random_uuid(), %s, '* 9-17 * * 1-5', 1)",
                (c1,),
            )
            conn.execute(
                "UPDATE workspaces SET owner_id = %s WHERE id = ("
                " SELECT workspace_id FROM workspace_builds WHERE job_id = %s)",
                (world.admin, done),
            )
            conn.commit()

        assert inbox.kinds() >= {
            "build_inserted",
            "job_status",
            "agent_ready",
            "version_promoted",
            "preset_changed",
            "settings_changed",
            "template_changed",
            "schedule_changed",
            "claimed",
        }
    finally:
        inbox.close()
