-- prebuildd-role.sql: the least-privilege database role `prebuildd`.
--
-- What it covers: `prebuildd run --no-migrate` (listener, reconcilers, sweeps, metrics, probes,
-- hard-limit notifications) and the operator commands `reconcile`, `status`, `pause`,
-- `resume`, `invalidate`, `autoscale set|list`.
-- What it does not cover, on purpose:
--   * `prebuildd migrate [--uninstall]` creates and drops triggers, functions and indexes on
--     Coder's tables: run it as the owner of those tables (Coder's database user).
--   * `prebuildd claim`, `prebuildd provisioner`, `prebuildd demo` are development tools. In
--     production Coder itself claims prebuilds and runs the provisioners; these commands need
--     rights the service must not have (hand workspaces to users, complete jobs, insert agents),
--     so run them as the owner, and only outside production.
--
-- What the role CAN do -- all a leaked password gives away:
--   * read, column by column, what the reconciler reads (below): organizations', templates',
--     versions' and presets' names and settings, presets' parameter values, versions'
--     parameter definitions and workspace tag expressions, and of EVERY workspace (users' included) its
--     id, name, owner id, template, creation time and deleted flag, its builds' numbers,
--     transitions, versions, presets and initiators, their jobs' status, their agents'
--     lifecycle states. Column grants cannot filter rows: this metadata of users' workspaces is
--     readable. Nothing else is: no Terraform state (workspace_builds.provisioner_state), no
--     agent token, no password hash, no API key, no user's e-mail or name, no job input or
--     log, no site setting other than the pause switch;
--   * call the SECURITY DEFINER functions of schema `prebuildd` (sql/functions/): create,
--     delete and retire prebuilds, store a preset's prebuild status, invalidate a preset,
--     notify template admins that a hard-limited preset is hard-limited, pause and resume
--     reconciliation, store a preset's autoscale policy (prebuildd's own table). Those act
--     only on workspaces owned by the prebuilds user and jobs it initiated. So the worst a
--     leaked credential does is to the prebuild pools: delete unclaimed prebuilds, queue new
--     ones (each costs what the template provisions; nothing bounds how many), mark presets
--     hard_limited or validation_failed, pause reconciliation, set autoscale policies (which
--     grow pools up to the max they name);
--   * take advisory locks, LISTEN and NOTIFY (not access-controlled in PostgreSQL), run
--     functions PUBLIC may run.
-- What the role CANNOT do: insert, update or delete any row of Coder's tables directly; touch
-- a user's workspace, build or job (no soft delete, no cancel, no claim); read the secrets
-- above; write site_configs beyond the pause switch; create tables, temporary tables or any
-- object; call prebuildd's internal functions. The script ends by verifying the most
-- important of these and rolls back if one does not hold.
--
-- TEMPORARY tables, and CREATE on Coder's schema, usually come from PUBLIC (every role is a
-- member): TEMPORARY on every database by default, CREATE on schema public before
-- PostgreSQL 15. A privilege of PUBLIC cannot be withheld from one role, so where PUBLIC holds
-- one of them the script grants it explicitly to every other existing role (not superusers,
-- not `prebuildd` and its members), then revokes it from PUBLIC. Nobody who had it loses it.
-- Trade-off: a role created AFTER the script does not get TEMPORARY on this database (or
-- CREATE on the schema) implicitly any more: grant it explicitly when a new role needs it
-- (`GRANT TEMPORARY ON DATABASE <db> TO <role>`). The database owner keeps both as owner.
-- Changing PUBLIC's privileges needs the database's (schema's) owner or a superuser; the
-- script fails with a hint otherwise.
--
-- How to apply (after `prebuildd migrate`, connected to Coder's database as the owner of
-- Coder's tables and of the database, or as a superuser; creating the role also needs
-- CREATEROLE):
--
--     psql "$OWNER_DATABASE_URL" -v ON_ERROR_STOP=1 -f deploy/sql/prebuildd-role.sql
--
-- then give the role a password once (psql interpolates :'pw'; note that a server logging DDL
-- logs that statement, password included, so set it out of band where that matters):
--
--     echo "ALTER ROLE prebuildd PASSWORD :'pw';" | psql "$OWNER_DATABASE_URL" -v pw="$PW"
--
-- Idempotent and converging: the script first revokes everything the role holds on the
-- schemas, their tables and routines, and the database, then grants exactly what is listed
-- below, in one transaction, so a re-run after an upgrade also removes grants a newer
-- prebuildd no longer needs, and a running service never sees a window without its grants.
-- Re-apply it after every upgrade of prebuildd.
--
-- Table names are unqualified, like Coder's own queries and `prebuildd migrate`: run the
-- script with the search_path that finds Coder's tables (normally `public`).
--
-- Every grant below names the queries (sql/queries/*.sql) that need it. Keep them in step:
-- tests/integration/test_least_privilege.py runs every query of the service as this role and
-- fails on a missing grant, and on a query nobody has classified.
--
-- Needs no grant at all:
--   * LISTEN prebuildd_events and NOTIFY (pg_notify): channels are not access-controlled;
--   * pg_try_advisory_xact_lock(_shared), hashtext, set_config (lock_templates,
--     generic_plans_*): executable by PUBLIC;
--   * the trigger function prebuildd.notify_event(): a trigger runs its function without a
--     privilege check; and the role writes no row itself -- the functions write as their
--     owner, so triggers on those writes (prebuildd's and Coder's, e.g. Coder's notification
--     enqueue checks) run with the owner's privileges too.

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
    IF to_regprocedure(
           'prebuildd.create_prebuilds(uuid, uuid, integer, timestamptz, jsonb, jsonb)'
       ) IS NULL
       OR to_regprocedure('prebuildd.throttle_lines(uuid[], jsonb, uuid[], boolean)') IS NULL THEN
        RAISE EXCEPTION 'prebuildd''s write functions are not installed in database %',
                        current_database()
            USING HINT = 'Run `prebuildd migrate` of this prebuildd version first.';
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
    EXECUTE format('REVOKE ALL ON ALL ROUTINES IN SCHEMA %I FROM prebuildd', current_schema());
    EXECUTE format('REVOKE ALL ON SCHEMA %I FROM prebuildd', current_schema());
    REVOKE ALL ON ALL TABLES IN SCHEMA prebuildd FROM prebuildd;
    REVOKE ALL ON ALL SEQUENCES IN SCHEMA prebuildd FROM prebuildd;
    REVOKE ALL ON ALL ROUTINES IN SCHEMA prebuildd FROM prebuildd;
    REVOKE ALL ON SCHEMA prebuildd FROM prebuildd;
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM prebuildd', current_database());

    -- Every connection (pool, listener, CLI). PUBLIC usually has CONNECT too; a hardened
    -- database that revoked it still lets this role in.
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO prebuildd', current_database());
    -- Resolving Coder's table names (every query). USAGE only: no CREATE.
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO prebuildd', current_schema());
END
$reset$;

-- ---------------------------------------------------------------------------------------------
-- Privileges PUBLIC holds that the role must not: TEMPORARY, CREATE on Coder's schema
-- ---------------------------------------------------------------------------------------------

-- Temporary tables would let the role shadow tables in code that searches pg_temp first, and
-- CREATE on Coder's schema would let it plant functions or operators that the owner's code
-- resolves to (the CVE-2018-1058 pattern). See the header for the trade-off.
DO $public$
DECLARE
    schema_name text := current_schema();
    keeper record;
    public_has_temp boolean;
    public_has_create boolean;
BEGIN
    -- A NULL ACL is the built-in default, in which PUBLIC has TEMPORARY on a database.
    SELECT d.datacl IS NULL OR EXISTS (
               SELECT 1 FROM aclexplode(d.datacl) AS a
               WHERE a.grantee = 0 AND a.privilege_type = 'TEMPORARY')
    INTO public_has_temp
    FROM pg_catalog.pg_database AS d
    WHERE d.datname = current_database();

    SELECT EXISTS (
               SELECT 1 FROM aclexplode(n.nspacl) AS a
               WHERE a.grantee = 0 AND a.privilege_type = 'CREATE')
    INTO public_has_create
    FROM pg_catalog.pg_namespace AS n
    WHERE n.nspname = schema_name;

    IF public_has_temp OR public_has_create THEN
        -- Everyone who had it through PUBLIC keeps it: ordinary roles (not the built-in ones,
        -- not superusers, who need no grant), except prebuildd and the roles that are members
        -- of it (its login roles).
        FOR keeper IN
            SELECT r.rolname
            FROM pg_catalog.pg_roles AS r
            WHERE r.oid >= 16384
              AND NOT r.rolsuper
              AND r.rolname <> 'prebuildd'
              AND NOT pg_has_role(r.oid, 'prebuildd', 'MEMBER')
            ORDER BY r.rolname
        LOOP
            IF public_has_temp THEN
                EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO %I',
                               current_database(), keeper.rolname);
            END IF;
            IF public_has_create THEN
                EXECUTE format('GRANT CREATE ON SCHEMA %I TO %I', schema_name, keeper.rolname);
            END IF;
        END LOOP;
        IF public_has_temp THEN
            EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
        END IF;
        IF public_has_create THEN
            EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', schema_name);
        END IF;
    END IF;
END
$public$;

-- ---------------------------------------------------------------------------------------------
-- Reads of configuration: organizations, templates, versions, presets, schedules, settings
-- ---------------------------------------------------------------------------------------------

-- snapshot_presets, prebuild_metrics: the organization's name labels plans and metrics.
GRANT SELECT (id, name) ON organizations TO prebuildd;

-- id, organization_id, active_version_id, deleted, deprecated: snapshot_presets,
--   snapshot_prebuilds (active or retired version), prebuild_metrics (live templates);
-- name: snapshot_presets, prebuild_metrics.
GRANT SELECT (id, name, organization_id, active_version_id, deleted, deprecated)
    ON templates TO prebuildd;

-- id, template_id: list_prebuild_templates, snapshot_presets, snapshot_schedules;
-- name, created_at: snapshot_presets.
GRANT SELECT (id, template_id, name, created_at) ON template_versions TO prebuildd;

-- list_prebuild_templates, snapshot_presets, snapshot_schedules, snapshot_prebuilds,
-- prebuild_metrics. No UPDATE: statuses and invalidations go through functions.
GRANT SELECT (
    id, template_version_id, name, desired_instances, invalidate_after_secs,
    scheduling_timezone, prebuild_status
) ON template_version_presets TO prebuildd;

-- snapshot_presets: the invalidation instant. Coder releases before v2.29 lack the column.
DO $invalidated$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_catalog.pg_attribute
        WHERE attrelid = 'template_version_presets'::regclass
          AND attname = 'last_invalidated_at' AND NOT attisdropped
    ) THEN
        GRANT SELECT (last_invalidated_at) ON template_version_presets TO prebuildd;
    END IF;
END
$invalidated$;

-- snapshot_build_inputs: what a create is checked against (the preset's values, the
-- version's parameters and their rules) and routed by (the workspace tags' expressions).
-- Nothing else of the parameters (description, icon) nor of the version.
GRANT SELECT (template_version_preset_id, name, value)
    ON template_version_preset_parameters TO prebuildd;
GRANT SELECT (
    template_version_id, name, display_name, type, form_type, required, default_value,
    options, validation_regex, validation_min, validation_max, validation_error,
    validation_monotonic, display_order
) ON template_version_parameters TO prebuildd;
GRANT SELECT (template_version_id, key, value) ON template_version_workspace_tags TO prebuildd;

-- snapshot_schedules; snapshot_prebuilds (largest scheduled desired count).
GRANT SELECT (id, preset_id, cron_expression, desired_instances)
    ON template_version_preset_prebuild_schedules TO prebuildd;

-- The pause switch, and nothing else of site_configs (whose other keys Coder keeps secret):
-- prebuilds_settings (read by every reconcile and the metrics loop) calls a security-definer
-- function that returns that one row's value (sql/functions/pause_switch.sql).
GRANT USAGE ON SCHEMA prebuildd TO prebuildd;
GRANT EXECUTE ON FUNCTION prebuildd.prebuilds_settings() TO prebuildd;

-- snapshot_policies (every reconcile), demand_events and demand_refill (the forecast's
-- inputs), autoscale_list: the autoscale policies, prebuildd's own table
-- (sql/schema/0007_autoscale_policies.sql). Written only through set_autoscale_policy below.
GRANT SELECT ON prebuildd.autoscale_policies TO prebuildd;

-- ---------------------------------------------------------------------------------------------
-- Reads of prebuilds' state: workspaces, builds, jobs, agents
-- ---------------------------------------------------------------------------------------------

-- snapshot_prebuilds (the prebuilds user's live workspaces of the templates),
-- prebuild_metrics (claimed = owned by someone else now; organization label).
GRANT SELECT (id, name, created_at, owner_id, organization_id, template_id, deleted)
    ON workspaces TO prebuildd;

-- snapshot_prebuilds (latest build of each prebuild), prebuild_metrics (first builds started
-- by the prebuilds user). Not provisioner_state: the delete function copies it itself.
GRANT SELECT (
    id, workspace_id, build_number, transition, initiator_id, template_version_id,
    template_version_preset_id, created_at, job_id
) ON workspace_builds TO prebuildd;

-- snapshot_prebuilds (in progress, cancelable, recent outcomes), prebuild_metrics (failed).
-- Not input, error, logs or tags.
GRANT SELECT (id, job_status, worker_id, canceled_at, completed_at)
    ON provisioner_jobs TO prebuildd;

-- snapshot_prebuilds: a build's agents, through its resources.
GRANT SELECT (id, job_id) ON workspace_resources TO prebuildd;

-- snapshot_prebuilds: eligible = every top-level, live agent is ready. Nothing else of the
-- agents (auth_token, environment, scripts) is readable.
GRANT SELECT (resource_id, lifecycle_state, parent_id, deleted) ON workspace_agents TO prebuildd;

-- ---------------------------------------------------------------------------------------------
-- Writes: the security-definer functions of sql/functions/prebuild_writes.sql
-- ---------------------------------------------------------------------------------------------

-- create_prebuilds, delete_prebuilds, cancel_pending_prebuilds, set_preset_status and
-- execute_actions, which calls them (actions.sql; sql/functions/prebuild_actions.sql);
-- notify_hard_limited (notifications.sql); invalidate_preset, set_reconciliation_paused
-- (admin.sql); set_autoscale_policy (demand.sql, autoscale_set: sql/functions/autoscale.sql
-- checks the bounds, the mode and the preset, and writes only prebuildd's own table).
GRANT EXECUTE ON FUNCTION
    prebuildd.create_prebuilds(uuid, uuid, integer, timestamptz, jsonb, jsonb),
    prebuildd.delete_prebuilds(uuid[], timestamptz, jsonb),
    prebuildd.cancel_pending_prebuilds(uuid, timestamptz),
    prebuildd.set_preset_status(uuid, text),
    prebuildd.notify_hard_limited(uuid, text, boolean),
    prebuildd.invalidate_preset(uuid, timestamptz),
    prebuildd.set_reconciliation_paused(boolean),
    prebuildd.set_autoscale_policy(uuid, text, integer, integer),
    -- every create, delete and cancel of a reconcile in one call (prebuild_actions.sql)
    prebuildd.execute_actions(jsonb, timestamptz, jsonb)
TO prebuildd;

-- The cap on pending prebuild create jobs, --max-pending-prebuild-jobs (throttle.sql of
-- sql/queries and sql/functions): read the tag sets' pending jobs and lines under their
-- locks, create under the cap, keep the line of held creates (prebuildd.throttle_waits,
-- which the role cannot write directly). The role could put fake entries in a line and
-- delay other presets' throttled creates: no more than it can already do to the pools.
GRANT EXECUTE ON FUNCTION
    prebuildd.throttle_lines(uuid[], jsonb, uuid[], boolean),
    prebuildd.create_prebuilds_capped(uuid, uuid, integer, timestamptz, jsonb, jsonb, integer),
    prebuildd.record_throttle_waits(
        uuid[], uuid[], uuid[], uuid[], jsonb[], integer[], timestamptz[]
    )
TO prebuildd;

-- ---------------------------------------------------------------------------------------------
-- Verify what the header promises (counting what PUBLIC grants too); roll back otherwise
-- ---------------------------------------------------------------------------------------------

DO $verify$
DECLARE
    schema_name text := current_schema();
    found text;
BEGIN
    IF has_database_privilege('prebuildd', current_database(), 'TEMPORARY') THEN
        RAISE EXCEPTION 'role prebuildd can still create temporary tables in database %',
                        current_database()
            USING HINT = 'Run this script as the database''s owner or a superuser, so that it '
                         'can revoke TEMPORARY from PUBLIC.';
    END IF;
    IF has_schema_privilege('prebuildd', schema_name, 'CREATE')
       OR has_schema_privilege('prebuildd', 'prebuildd', 'CREATE') THEN
        RAISE EXCEPTION 'role prebuildd can still create objects in schema % or prebuildd',
                        schema_name
            USING HINT = 'Run this script as the schema''s owner or a superuser, so that it '
                         'can revoke CREATE from PUBLIC.';
    END IF;

    -- No direct write of any kind on any table or view of Coder's schema or prebuildd's.
    SELECT string_agg(format('%s on %I.%I', w.privilege, n.nspname, c.relname), ', ')
    INTO found
    FROM pg_catalog.pg_class AS c
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    CROSS JOIN (VALUES ('INSERT'), ('UPDATE'), ('DELETE'), ('TRUNCATE'), ('REFERENCES'),
                       ('TRIGGER')) AS w (privilege)
    WHERE n.nspname IN (schema_name, 'prebuildd')
      AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND (has_table_privilege('prebuildd', c.oid, w.privilege)
           OR (w.privilege IN ('INSERT', 'UPDATE', 'REFERENCES')
               AND has_any_column_privilege('prebuildd', c.oid, w.privilege)));
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'role prebuildd can still write directly: %', found;
    END IF;

    -- Secrets stay unreadable (where this Coder release has the column).
    SELECT string_agg(format('%I.%I', s.tbl, s.col), ', ')
    INTO found
    FROM (VALUES ('workspace_builds', 'provisioner_state'), ('users', 'hashed_password'),
                 ('users', 'hashed_one_time_passcode'), ('workspace_agents', 'auth_token'),
                 ('api_keys', 'hashed_secret'), ('site_configs', 'value'),
                 ('provisioner_jobs', 'input')) AS s (tbl, col)
    JOIN pg_catalog.pg_attribute AS a
        ON a.attrelid = to_regclass(format('%I.%I', schema_name, s.tbl))
       AND a.attname = s.col AND NOT a.attisdropped
    WHERE has_column_privilege('prebuildd', a.attrelid, a.attnum, 'SELECT');
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'role prebuildd can still read %', found;
    END IF;

    -- None of prebuildd's routines is left executable by PUBLIC (functions are, unless
    -- revoked): the internal helpers would write without the entry points' checks. The role
    -- executes exactly the routines granted to it by name above.
    SELECT string_agg(p.oid::regprocedure::text, ', ')
    INTO found
    FROM pg_catalog.pg_proc AS p
    JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
    WHERE n.nspname = 'prebuildd'
      AND p.prorettype <> 'trigger'::regtype  -- callable only as a trigger
      AND (p.proacl IS NULL OR EXISTS (
               SELECT 1 FROM aclexplode(p.proacl) AS a
               WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'));
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'prebuildd routines executable by PUBLIC, so by role prebuildd: %', found
            USING HINT = 'REVOKE ALL ON FUNCTION ... FROM PUBLIC in the file that creates them.';
    END IF;
END
$verify$;

COMMIT;
