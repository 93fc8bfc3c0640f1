-- prebuildd-role.sql: the least-privilege database role `prebuildd`.
--
-- What it covers: `prebuildd run --no-migrate` (listener, reconcilers, sweeps, metrics, probes,
-- hard-limit notifications) and the operator commands `reconcile`, `status`, `pause`,
-- `resume`, `invalidate`.
-- What it does not cover, on purpose:
--   * `prebuildd migrate [--uninstall]` creates and drops triggers, functions and indexes on
--     Coder's tables: run it as the owner of those tables (Coder's database user).
--   * `prebuildd claim`, `prebuildd provisioner`, `prebuildd demo` are development tools. In
--     production Coder itself claims prebuilds and runs the provisioners; these commands need
--     rights the service must not have (hand workspaces to users, complete jobs, insert agents),
--     so run them as the owner, and only outside production.
--
-- How to apply (after `prebuildd migrate`, connected to Coder's database as the owner of
-- Coder's tables, or as a superuser; creating the role also needs CREATEROLE):
--
--     psql "$OWNER_DATABASE_URL" -v ON_ERROR_STOP=1 -f deploy/sql/prebuildd-role.sql
--
-- then give the role a password once (psql interpolates :'pw'; note that a server logging DDL
-- logs that statement, password included, so set it out of band where that matters):
--
--     echo "ALTER ROLE prebuildd PASSWORD :'pw';" | psql "$OWNER_DATABASE_URL" -v pw="$PW"
--
-- Idempotent and converging: the script first revokes everything the role holds on the
-- schema, then grants exactly what is listed below, in one transaction, so a re-run after an
-- upgrade also removes grants a newer prebuildd no longer needs, and a running service never
-- sees a window without its grants. Re-apply it after every upgrade of prebuildd.
--
-- Table names are unqualified, like Coder's own queries and `prebuildd migrate`: run the
-- script with the search_path that finds Coder's tables (normally `public`).
--
-- Every grant below is column-level and names the queries (sql/queries/*.sql) or the trigger
-- function (sql/triggers/0001_notify.sql) that need it. Keep them in step:
-- tests/integration/test_least_privilege.py runs every query of the service as this role and
-- fails on a missing grant, and on a query nobody has classified.
--
-- Needs no grant at all:
--   * LISTEN prebuildd_events and NOTIFY (pg_notify): channels are not access-controlled;
--   * pg_try_advisory_xact_lock, hashtext, gen_random_uuid, md5 (lock_templates,
--     create_prebuilds): executable by PUBLIC;
--   * the trigger function prebuildd.notify_event(): a trigger runs its function without a
--     privilege check on the function or its schema; the function's own lookups run with the
--     privileges of whoever writes the row, hence the "trigger" notes below;
--   * foreign-key checks on the rows the service inserts: they run as the table owner;
--   * schema `prebuildd`: only USAGE, to reach the pause switch's view and function below;
--     the bookkeeping of migrate stays unreadable.
--
-- Known limits of column-level grants (they cannot filter rows):
--   * workspace_builds.provisioner_state (Terraform state) is readable for every build:
--     delete_prebuilds copies it into the delete build, as Coder's own builder does.
--   * users' e-mail addresses and names are readable for every user: notify_hard_limited
--     picks the recipients and fills the message payload in SQL.

BEGIN;

-- ---------------------------------------------------------------------------------------------
-- Preconditions
-- ---------------------------------------------------------------------------------------------

DO $pre$
BEGIN
    IF to_regclass('prebuildd.schema_migrations') IS NULL
       OR to_regclass('template_version_presets') IS NULL THEN
        RAISE EXCEPTION 'prebuildd objects not found in database %', current_database()
            USING HINT = 'Run `prebuildd migrate` as the owner of Coder''s tables first, '
                         'with the search_path that finds them.';
    END IF;
END
$pre$;

-- ---------------------------------------------------------------------------------------------
-- The role: a plain login role with no attributes beyond LOGIN, member of no other role
-- ---------------------------------------------------------------------------------------------

DO $role$
DECLARE
    elevated text;
    memberships text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'prebuildd') THEN
        -- No password here: see the header. NOINHERIT: rights granted to it later by
        -- mistake through another role are not picked up silently.
        CREATE ROLE prebuildd LOGIN NOINHERIT
            NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
        RETURN;
    END IF;

    -- An existing role with more power would make every grant below meaningless: refuse.
    SELECT string_agg(attr, ', ') INTO elevated
    FROM pg_catalog.pg_roles AS r
    CROSS JOIN LATERAL (VALUES
        ('SUPERUSER', r.rolsuper), ('CREATEDB', r.rolcreatedb),
        ('CREATEROLE', r.rolcreaterole), ('REPLICATION', r.rolreplication),
        ('BYPASSRLS', r.rolbypassrls)
    ) AS a (attr, is_set)
    WHERE r.rolname = 'prebuildd' AND a.is_set;
    IF elevated IS NOT NULL THEN
        RAISE EXCEPTION 'role prebuildd exists with %: not a least-privilege role', elevated
            USING HINT = 'ALTER ROLE prebuildd NO<attribute>, or drop it and re-run this script.';
    END IF;

    SELECT string_agg(g.rolname, ', ' ORDER BY g.rolname) INTO memberships
    FROM pg_catalog.pg_auth_members AS m
    JOIN pg_catalog.pg_roles AS g ON g.oid = m.roleid
    JOIN pg_catalog.pg_roles AS u ON u.oid = m.member
    WHERE u.rolname = 'prebuildd';
    IF memberships IS NOT NULL THEN
        RAISE EXCEPTION 'role prebuildd is a member of %: not a least-privilege role', memberships
            USING HINT = 'REVOKE <role> FROM prebuildd, then re-run this script.';
    END IF;
END
$role$;

-- ---------------------------------------------------------------------------------------------
-- Start from nothing, then connect and schema
-- ---------------------------------------------------------------------------------------------

DO $reset$
BEGIN
    -- Revoking a table privilege also revokes the column privileges of that kind.
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM prebuildd', current_schema());
    EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM prebuildd', current_schema());
    EXECUTE format('REVOKE ALL ON SCHEMA %I FROM prebuildd', current_schema());
    REVOKE ALL ON ALL TABLES IN SCHEMA prebuildd FROM prebuildd;
    REVOKE ALL ON ALL SEQUENCES IN SCHEMA prebuildd FROM prebuildd;
    REVOKE ALL ON ALL ROUTINES IN SCHEMA prebuildd FROM prebuildd;
    REVOKE ALL ON SCHEMA prebuildd FROM prebuildd;

    -- Every connection (pool, listener, CLI). PUBLIC usually has CONNECT too; a hardened
    -- database that revoked it still lets this role in.
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO prebuildd', current_database());
    -- Resolving Coder's table names (every query). USAGE only: no CREATE.
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO prebuildd', current_schema());
END
$reset$;

-- ---------------------------------------------------------------------------------------------
-- Reads of configuration: organizations, templates, versions, presets, schedules, settings
-- ---------------------------------------------------------------------------------------------

-- snapshot_presets, prebuild_metrics: the organization's name labels plans and metrics.
GRANT SELECT (id, name) ON organizations TO prebuildd;

-- id, active_version_id, deleted, deprecated: snapshot_presets, snapshot_prebuilds,
--   create_prebuilds (only the active version of a live template), cancel_pending_prebuilds;
-- name: snapshot_presets, prebuild_metrics;
-- organization_id, provisioner: create_prebuilds, delete_prebuilds (the job's owner and kind).
GRANT SELECT (id, name, organization_id, active_version_id, deleted, deprecated, provisioner)
    ON templates TO prebuildd;

-- id, template_id: list_prebuild_templates, snapshot_presets, snapshot_schedules,
--   create_prebuilds, trigger (preset_changed after `invalidate`);
-- name, created_at: snapshot_presets;
-- job_id (the import job: storage, file, tags of new jobs): create_prebuilds, delete_prebuilds.
GRANT SELECT (id, template_id, name, created_at, job_id) ON template_versions TO prebuildd;

-- list_prebuild_templates, snapshot_presets, snapshot_schedules, snapshot_prebuilds,
-- prebuild_metrics, create_prebuilds; RETURNING of set_preset_status and invalidate_preset.
GRANT SELECT (
    id, template_version_id, name, desired_instances, invalidate_after_secs,
    last_invalidated_at, scheduling_timezone, prebuild_status
) ON template_version_presets TO prebuildd;

-- prebuild_status: set_preset_status (hard_limited, validation_failed, back to healthy).
-- last_invalidated_at: invalidate_preset (`prebuildd invalidate`).
GRANT UPDATE (prebuild_status, last_invalidated_at) ON template_version_presets TO prebuildd;

-- create_prebuilds: a new prebuild's build parameters are its preset's.
GRANT SELECT (template_version_preset_id, name, value)
    ON template_version_preset_parameters TO prebuildd;

-- snapshot_schedules; snapshot_prebuilds (largest scheduled desired count).
GRANT SELECT (id, preset_id, cron_expression, desired_instances)
    ON template_version_preset_prebuild_schedules TO prebuildd;

-- The pause switch, and nothing else of site_configs (whose other keys Coder keeps secret):
-- prebuilds_settings (read by every reconcile and the metrics loop) selects from a view of
-- that one row; set_reconciliation_paused (`pause`/`resume`) calls a security-definer
-- function. Both are created by migrate (sql/schema/0002_pause_switch.sql).
GRANT USAGE ON SCHEMA prebuildd TO prebuildd;
GRANT EXECUTE ON FUNCTION prebuildd.prebuilds_settings() TO prebuildd;
GRANT EXECUTE ON FUNCTION prebuildd.set_reconciliation_paused(boolean) TO prebuildd;

-- ---------------------------------------------------------------------------------------------
-- Prebuilds: workspaces, builds, parameters, jobs
-- ---------------------------------------------------------------------------------------------

-- id, template_id, owner_id, deleted: snapshot_prebuilds, delete_prebuilds (re-check under
--   the row lock), cancel_pending_prebuilds, prebuild_metrics, trigger (build_inserted,
--   job_status); id is also returned by create_prebuilds and cancel_pending_prebuilds;
-- name, created_at (TTL expiry is measured from it): snapshot_prebuilds;
-- organization_id: prebuild_metrics.
GRANT SELECT (id, name, created_at, owner_id, organization_id, template_id, deleted)
    ON workspaces TO prebuildd;

-- create_prebuilds: the new prebuild workspace, owned by the prebuilds user.
GRANT INSERT (
    id, created_at, updated_at, owner_id, organization_id, template_id, deleted, name,
    autostart_schedule, ttl, last_used_at, automatic_updates, favorite, next_start_at
) ON workspaces TO prebuildd;

-- deleted: cancel_pending_prebuilds retires never-built workspaces. Also what lets
-- delete_prebuilds and cancel_pending_prebuilds lock rows (SELECT ... FOR UPDATE needs UPDATE
-- on at least one column). No UPDATE of owner_id or name: claiming is Coder's job.
GRANT UPDATE (deleted) ON workspaces TO prebuildd;

-- snapshot_prebuilds (latest build of each prebuild), prebuild_metrics, delete_prebuilds
-- (the latest build to repeat: version, preset, number, provisioner_state),
-- cancel_pending_prebuilds, trigger (job_status: which workspace a job belongs to).
GRANT SELECT (
    id, workspace_id, build_number, transition, initiator_id, template_version_id,
    template_version_preset_id, created_at, job_id, provisioner_state
) ON workspace_builds TO prebuildd;

-- create_prebuilds (build 1, start), delete_prebuilds (delete build),
-- cancel_pending_prebuilds (build 2, delete, already completed).
GRANT INSERT (
    id, created_at, updated_at, workspace_id, template_version_id, build_number, transition,
    initiator_id, provisioner_state, job_id, deadline, max_deadline, reason,
    template_version_preset_id
) ON workspace_builds TO prebuildd;

-- delete_prebuilds and cancel_pending_prebuilds copy the previous build's parameters;
-- the three inserts return workspace_build_id.
GRANT SELECT (workspace_build_id, name, value) ON workspace_build_parameters TO prebuildd;
GRANT INSERT (workspace_build_id, name, value) ON workspace_build_parameters TO prebuildd;

-- job_status, worker_id, canceled_at, completed_at: snapshot_prebuilds, prebuild_metrics,
--   delete_prebuilds, cancel_pending_prebuilds;
-- organization_id, provisioner, storage_method, file_id, tags: create_prebuilds and
--   delete_prebuilds (from the import job), cancel_pending_prebuilds (from the canceled job);
-- id: every join on jobs, and the inserts' RETURNING.
GRANT SELECT (
    id, organization_id, provisioner, storage_method, file_id, tags, job_status, worker_id,
    canceled_at, completed_at
) ON provisioner_jobs TO prebuildd;

-- create_prebuilds, delete_prebuilds (pending jobs for Coder's provisioners),
-- cancel_pending_prebuilds (a delete job completed at once: started_at, completed_at).
GRANT INSERT (
    id, created_at, updated_at, started_at, completed_at, organization_id, initiator_id,
    provisioner, storage_method, type, input, file_id, tags, trace_metadata
) ON provisioner_jobs TO prebuildd;

-- cancel_pending_prebuilds: cancel queued first-build jobs nobody picked up. Nothing else:
-- no started_at, error, worker_id (running jobs are the provisioners' business).
GRANT UPDATE (canceled_at, completed_at, updated_at) ON provisioner_jobs TO prebuildd;

-- ---------------------------------------------------------------------------------------------
-- Readiness of prebuilds: resources and agents
-- ---------------------------------------------------------------------------------------------

-- snapshot_prebuilds: a build's agents, through its resources.
GRANT SELECT (id, job_id) ON workspace_resources TO prebuildd;

-- snapshot_prebuilds: eligible = every top-level, live agent is ready. Nothing else of the
-- agents (auth_token, environment, scripts) is readable.
GRANT SELECT (resource_id, lifecycle_state, parent_id, deleted) ON workspace_agents TO prebuildd;

-- ---------------------------------------------------------------------------------------------
-- Hard-limit notifications to template admins, through Coder's notification queue
-- ---------------------------------------------------------------------------------------------

-- notify_hard_limited: the recipients (active, non-system template admins and owners) and
-- the fields of Coder's message payload. No hashed_password, no login or OAuth columns.
GRANT SELECT (id, email, name, username, deleted, status, is_system, rbac_roles)
    ON users TO prebuildd;

-- notify_hard_limited: only when Coder's "Prebuild Failure Limit Reached" template exists.
GRANT SELECT (id) ON notification_templates TO prebuildd;

-- notify_hard_limited: one pending message per admin and method (dedupe_hash is filled by
-- Coder's own BEFORE INSERT trigger). SELECT: user_id is returned; dedupe_hash is the
-- ON CONFLICT target, which PostgreSQL checks like a read.
GRANT INSERT (
    id, notification_template_id, user_id, method, status, created_by, payload, targets,
    created_at
) ON notification_messages TO prebuildd;
GRANT SELECT (user_id, dedupe_hash) ON notification_messages TO prebuildd;

-- Coder's full schema has a second BEFORE INSERT trigger on notification_messages,
-- inhibit_enqueue_if_disabled(), which runs as the writer and reads the template's default and
-- the user's preference. The subset prebuildd creates on an empty database has neither that
-- trigger nor that table, hence the condition.
DO $coder_trigger$
BEGIN
    IF to_regclass('notification_preferences') IS NOT NULL THEN
        GRANT SELECT (id, enabled_by_default) ON notification_templates TO prebuildd;
        GRANT SELECT (notification_template_id, user_id, disabled)
            ON notification_preferences TO prebuildd;
    END IF;
END
$coder_trigger$;

COMMIT;
