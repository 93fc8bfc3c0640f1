"""The Coder subset, introspected, against a list written from Coder's dump.sql by hand.

The expectations below are deliberately not derived from sql/schema/coder_subset.sql: they are
what Coder's schema says for each included column (type as PostgreSQL's format_type() prints
it, and NOT NULL), so a drift in the subset file fails here.
"""

from __future__ import annotations

from typing import cast

import psycopg
import pytest

from prebuildd.migrate import REQUIRED_COLUMNS, find_missing
from prebuildd.model import PREBUILDS_USER_ID

Conn = psycopg.Connection[tuple[object, ...]]

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
}

# Unique constraints and indexes writers rely on (ON CONFLICT, duplicate detection).
EXPECTED_UNIQUE = {
    "workspace_builds_job_id_key",
    "workspace_builds_workspace_id_build_number_key",
    "workspace_build_parameters_workspace_build_id_name_key",
    "template_versions_template_id_name_key",
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


def test_required_columns_manifest_is_exactly_the_subset(conn: Conn) -> None:
    found = _columns(conn, "rv")
    introspected = {(t, c) for t, cols in found.items() for c, _, _ in cols}
    manifest = {(t, c) for t, cols in REQUIRED_COLUMNS.items() for c in cols}
    assert manifest == introspected
    assert find_missing(conn) == ()
