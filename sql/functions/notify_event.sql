-- Event source: the trigger functions behind every prebuildd_* trigger on Coder's tables
-- (sql/triggers/<table>.sql). They NOTIFY channel `prebuildd_events` when something a
-- prebuild pool depends on changed; the service LISTENs and reconciles only the template
-- named in the payload (SPEC section 4).
--
-- Repeatable file: `prebuildd migrate` re-applies it whenever its checksum changes, before the
-- trigger files, which then point each table's triggers at their function. (During an
-- upgrade from a release whose triggers all called notify_event(kind), those of the four hot
-- tables send nothing for the moment until their table's file is applied: the sweep covers.)
--
-- Payload (compact JSON, always < 200 bytes):
--     {"v":1,"k":"<kind>","t":"<template uuid>","at":<epoch seconds of now()>}
-- "t" is absent for global kinds (settings_changed). "at" is the *transaction start*, so all
-- rows of one (kind, template) touched by one transaction produce byte-identical payloads,
-- and PostgreSQL delivers identical payloads of one transaction only once: a statement that
-- updates 100 jobs of one template sends one notification, not 100.
--
-- Never in the way of Coder (issue 14):
--
-- * No catalog dependency on Coder's columns or types. The triggers carry no `UPDATE OF`
--   list and no `WHEN` clause; every filter is here, in PL/pgSQL, whose bodies are plain text
--   resolved when they run. Coder's migrations may therefore retype, rename or drop any column
--   read here (recreate an enum, widen an integer, varchar -> text) without "cannot alter
--   type of a column used in a trigger definition".
-- * Never fails Coder's write. Everything that reads a row, looks a template up or sends runs
--   in one block whose handler turns any error into a short WARNING (kind, table, SQLSTATE;
--   never a row value) and sends nothing: the service's periodic sweep covers a lost event.
--   The errors that matter in practice: a column renamed or dropped by Coder (42703, "record
--   "new" has no field ...") until prebuildd follows the rename, and a column whose type
--   changed under a session that had already run the function: PL/pgSQL keeps a plan per
--   expression for the session, typed for the old column (42804 "type of parameter ... does
--   not match that when preparing the plan", or XX000 when the old enum type is gone). For
--   those two the handler also runs DISCARD PLANS, so that session's next call re-plans with
--   the new types: one event lost, not every event of that connection until it closes.
--   (DISCARD PLANS only makes the session re-plan its prepared statements on next use.)
-- * NOTIFY itself can fail at COMMIT, where no handler runs, when the server's notification
--   queue is full (a LISTENing session that stopped reading). Before sending, an event is
--   skipped (WARNING) when pg_notification_queue_usage() has reached the limit in setting
--   `prebuildd.max_notify_queue_usage` (a fraction; default 0.5, far above anything a reading
--   listener leaves behind), so a stuck listener can never make Coder's commits fail.
--
-- Cost on Coder's hot paths. Without `UPDATE OF`/`WHEN`, every row written to a table with a
-- prebuildd trigger enters PL/pgSQL, and the handler makes that a subtransaction (no
-- transaction id, no WAL). The four tables Coder writes most (provisioner_jobs,
-- workspace_agents, workspaces, workspace_builds) therefore each get a function of their own:
-- one test of the row's own columns, with constants inline, before anything else. Measured
-- per single-row transaction, that is about 6 us of server CPU against 10 us for a shared
-- function that first decides which table it serves (docs/benchmarks.md). The rarely written
-- tables share prebuildd.notify_event(kind). The repetition between the functions (guard,
-- queue limit, handler) is deliberate: a trigger function runs without a privilege check,
-- but a helper it called would need EXECUTE on it and USAGE on schema prebuildd from Coder's
-- role. tests/integration/test_coder_upgrades.py checks every one of them for the guard and
-- the queue limit.
--
-- Lookups name Coder's tables unqualified, resolved by the writer's search_path like Coder's
-- own queries. A NULL template means "not ours" (a user's workspace, a version not yet
-- attached to a template): nothing is sent.

-- The service's own writes. prebuildd.execute_actions (prebuild_actions.sql) sets the
-- transaction-local `prebuildd.own_writes` to 'on' while it runs a reconcile's creates,
-- deletes and cancels: their build_inserted and job_status events are not sent, since the
-- reconcile that wrote them already saw everything they would announce and an echo only costs
-- a follow-up reconcile with nothing to do (issue 11). A throttle_turn (another template's
-- turn) still is. The test costs a setting lookup, only on prebuild rows.

-- ---------------------------------------------------------------------------------------------
-- provisioner_jobs, AFTER UPDATE: a prebuild's job changed status
-- ---------------------------------------------------------------------------------------------

-- Heartbeats (updated_at), log appends and users' jobs are the bulk of Coder's writes; they
-- leave at the first test. Only jobs the prebuilds user initiated (prebuildd's creates and
-- deletes) count. A build someone else starts on an unclaimed prebuild (an admin, rare) is
-- left to the sweep. No test of the job type: the lookup finds only builds' jobs.
-- Announced as job_status: failures and cancels (canceling, canceled). The planner counts a
-- pending or running job alike ("in progress"), so pending -> running changes no decision (a
-- started job is merely no longer cancelable, which a cancel re-checks under its lock anyway).
-- A success is not announced either (issue 11: NOTIFY takes a cluster-wide lock held across
-- the commit's WAL flush, so notifying commits cannot share a flush; docs/benchmarks.md): a
-- starting prebuild already counts toward `desired`, a deleting one for nothing, and a
-- finished delete leaves nothing to do. A success returns before any lookup. Announcing the
-- successes of start builds whose preset became inactive while they ran (a promotion, a
-- deleted or deprecated template) was measured side by side and not kept: the lookup it needs
-- on every success (the build by its job, its workspace, the template) cost ~25-35 us of
-- server CPU per success and kept prebuild job writers under their targets with 16 and 64
-- writers. What a success changes therefore waits for the prebuild's agent_ready event, or for
-- the periodic sweep on templates without agents: the delete of a prebuild whose preset
-- became inactive during its build, a surplus after `desired` was lowered or an invalidation
-- during the build, a hard-limited preset's return to healthy, the gauges. Failures and
-- cancels feed the backoff and the hard limit, and stay announced.
-- A job leaving the queue (pending -> anything) does make room under the cap on pending
-- prebuild jobs (--max-pending-prebuild-jobs, sql/functions/throttle.sql): when creates wait
-- in its organization and tag set's line (prebuildd.throttle_waits), the first template in
-- line is sent `throttle_turn`. Without the cap the line is empty and that costs one probe of
-- an empty index, only on a prebuild job's first status change (bench/trigger_overhead.py).
CREATE OR REPLACE FUNCTION prebuildd.notify_job_status() RETURNS trigger
    LANGUAGE plpgsql
AS $fn$
DECLARE
    tpl          uuid;
    next_in_line uuid;
    failure      text;
BEGIN
    BEGIN
        IF NEW.initiator_id IS DISTINCT FROM 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
           OR NEW.job_status IS NOT DISTINCT FROM OLD.job_status THEN
            RETURN NULL;
        END IF;
        IF OLD.job_status = 'pending' THEN
            SELECT tw.template_id INTO next_in_line
            FROM prebuildd.throttle_waits tw
            WHERE tw.organization_id = NEW.organization_id
              AND tw.tags = NEW.tags
            ORDER BY tw.waiting_since, tw.preset_id
            LIMIT 1;
            IF next_in_line IS NOT NULL THEN
                IF pg_catalog.pg_notification_queue_usage() >= COALESCE(
                       NULLIF(pg_catalog.current_setting('prebuildd.max_notify_queue_usage',
                                                         true), '')::float8,
                       0.5) THEN
                    RAISE WARNING
                        'prebuildd: throttle_turn event not sent: notification queue too full';
                    RETURN NULL;
                END IF;
                PERFORM pg_catalog.pg_notify('prebuildd_events', pg_catalog.format(
                    '{"v":1,"k":"throttle_turn","t":"%s","at":%s}', next_in_line,
                    extract(epoch FROM pg_catalog.now())));
            END IF;
            IF NEW.job_status = 'running' THEN
                RETURN NULL;
            END IF;
        END IF;
        -- A success is not announced (above).
        IF NEW.job_status = 'succeeded' THEN
            RETURN NULL;
        END IF;
        -- The service's own writes (prebuildd.execute_actions) are not echoed back.
        IF pg_catalog.current_setting('prebuildd.own_writes', true) = 'on' THEN
            RETURN NULL;
        END IF;
        SELECT w.template_id INTO tpl
        FROM workspace_builds b
        JOIN workspaces w ON w.id = b.workspace_id
        WHERE b.job_id = NEW.id
          AND (b.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
               OR w.owner_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid);
        IF tpl IS NULL THEN
            RETURN NULL;
        END IF;
        IF pg_catalog.pg_notification_queue_usage() >= COALESCE(
               NULLIF(pg_catalog.current_setting('prebuildd.max_notify_queue_usage', true), '')
                   ::float8,
               0.5) THEN
            RAISE WARNING 'prebuildd: job_status event not sent: notification queue too full';
            RETURN NULL;
        END IF;
        PERFORM pg_catalog.pg_notify('prebuildd_events', pg_catalog.format(
            '{"v":1,"k":"job_status","t":"%s","at":%s}', tpl,
            extract(epoch FROM pg_catalog.now())));
    EXCEPTION WHEN OTHERS THEN
        -- Nothing in here may raise: an error escaping this handler would fail Coder's write.
        failure := SQLSTATE;
        IF failure IN ('42804', 'XX000') THEN
            BEGIN
                DISCARD PLANS;
            EXCEPTION WHEN OTHERS THEN
                NULL;
            END;
        END IF;
        -- The message of a missing column or a changed type names the column or the type;
        -- other messages may quote a value, so only their SQLSTATE is reported.
        RAISE WARNING 'prebuildd: job_status event on % not sent (SQLSTATE %)%',
            TG_TABLE_NAME, failure,
            CASE WHEN failure IN ('42703', '42804') THEN ': ' || SQLERRM ELSE '' END
            USING HINT = 'The periodic sweep catches up. After a Coder upgrade, check that '
                         'this prebuildd release supports it and run prebuildd migrate.';
    END;
    RETURN NULL;
END;
$fn$;

-- ---------------------------------------------------------------------------------------------
-- workspace_agents, AFTER INSERT and AFTER UPDATE: a prebuild's agent became, or stopped
-- being, ready
-- ---------------------------------------------------------------------------------------------

-- Becoming ready makes a prebuild claimable, leaving ready makes it not; an agent inserted
-- ready (the simulated provisioner) counts as becoming ready. Agents' connection bookkeeping
-- (last_connected_at, ...) leaves at the first test. Agents of claimed workspaces are not
-- ours (the lookup requires the prebuilds user as owner).
CREATE OR REPLACE FUNCTION prebuildd.notify_agent_ready() RETURNS trigger
    LANGUAGE plpgsql
AS $fn$
DECLARE
    tpl     uuid;
    failure text;
BEGIN
    BEGIN
        IF TG_OP = 'UPDATE' THEN
            IF (NEW.lifecycle_state = 'ready') IS NOT DISTINCT FROM
               (OLD.lifecycle_state = 'ready') THEN
                RETURN NULL;
            END IF;
        ELSIF NEW.lifecycle_state IS DISTINCT FROM 'ready' THEN
            RETURN NULL;
        END IF;
        SELECT w.template_id INTO tpl
        FROM workspace_resources r
        JOIN workspace_builds b ON b.job_id = r.job_id
        JOIN workspaces w ON w.id = b.workspace_id
        WHERE r.id = NEW.resource_id
          AND w.owner_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid;
        IF tpl IS NULL THEN
            RETURN NULL;
        END IF;
        IF pg_catalog.pg_notification_queue_usage() >= COALESCE(
               NULLIF(pg_catalog.current_setting('prebuildd.max_notify_queue_usage', true), '')
                   ::float8,
               0.5) THEN
            RAISE WARNING 'prebuildd: agent_ready event not sent: notification queue too full';
            RETURN NULL;
        END IF;
        PERFORM pg_catalog.pg_notify('prebuildd_events', pg_catalog.format(
            '{"v":1,"k":"agent_ready","t":"%s","at":%s}', tpl,
            extract(epoch FROM pg_catalog.now())));
    EXCEPTION WHEN OTHERS THEN
        -- Nothing in here may raise: an error escaping this handler would fail Coder's write.
        failure := SQLSTATE;
        IF failure IN ('42804', 'XX000') THEN
            BEGIN
                DISCARD PLANS;
            EXCEPTION WHEN OTHERS THEN
                NULL;
            END;
        END IF;
        RAISE WARNING 'prebuildd: agent_ready event on % not sent (SQLSTATE %)%',
            TG_TABLE_NAME, failure,
            CASE WHEN failure IN ('42703', '42804') THEN ': ' || SQLERRM ELSE '' END
            USING HINT = 'The periodic sweep catches up. After a Coder upgrade, check that '
                         'this prebuildd release supports it and run prebuildd migrate.';
    END;
    RETURN NULL;
END;
$fn$;

-- ---------------------------------------------------------------------------------------------
-- workspaces, AFTER UPDATE: a prebuild was handed to a user
-- ---------------------------------------------------------------------------------------------

-- Coder updates workspaces often (activity, deadlines); anything but a change of owner away
-- from the prebuilds user leaves at the first test. From one user to another is no claim.
CREATE OR REPLACE FUNCTION prebuildd.notify_claimed() RETURNS trigger
    LANGUAGE plpgsql
AS $fn$
DECLARE
    tpl     uuid;
    failure text;
BEGIN
    BEGIN
        IF OLD.owner_id IS DISTINCT FROM 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
           OR NEW.owner_id IS NOT DISTINCT FROM OLD.owner_id THEN
            RETURN NULL;
        END IF;
        tpl := NEW.template_id;
        IF tpl IS NULL THEN
            RETURN NULL;
        END IF;
        IF pg_catalog.pg_notification_queue_usage() >= COALESCE(
               NULLIF(pg_catalog.current_setting('prebuildd.max_notify_queue_usage', true), '')
                   ::float8,
               0.5) THEN
            RAISE WARNING 'prebuildd: claimed event not sent: notification queue too full';
            RETURN NULL;
        END IF;
        PERFORM pg_catalog.pg_notify('prebuildd_events', pg_catalog.format(
            '{"v":1,"k":"claimed","t":"%s","at":%s}', tpl,
            extract(epoch FROM pg_catalog.now())));
    EXCEPTION WHEN OTHERS THEN
        -- Nothing in here may raise: an error escaping this handler would fail Coder's write.
        failure := SQLSTATE;
        IF failure IN ('42804', 'XX000') THEN
            BEGIN
                DISCARD PLANS;
            EXCEPTION WHEN OTHERS THEN
                NULL;
            END;
        END IF;
        RAISE WARNING 'prebuildd: claimed event on % not sent (SQLSTATE %)%',
            TG_TABLE_NAME, failure,
            CASE WHEN failure IN ('42703', '42804') THEN ': ' || SQLERRM ELSE '' END
            USING HINT = 'The periodic sweep catches up. After a Coder upgrade, check that '
                         'this prebuildd release supports it and run prebuildd migrate.';
    END;
    RETURN NULL;
END;
$fn$;

-- ---------------------------------------------------------------------------------------------
-- workspace_builds, AFTER INSERT: the prebuilds user started a build, or a person missed a pool
-- ---------------------------------------------------------------------------------------------

-- prebuildd's creates and deletes (build_inserted); and a *miss* (missed, issue 16): a person's
-- first build (build 1, `start`) naming a preset that keeps a pool -- someone who wanted a
-- prebuild and waited for a fresh build instead (sql/queries/demand.sql has the definition).
-- Most of Coder's builds are people's later builds: they leave at the second test, after
-- reading two columns of the row. A claim is not a miss: its build is not build 1 (the
-- workspaces trigger announces it). The preset lookup goes through the preset's version to its
-- template: two primary-key probes, once per workspace a person creates from a preset.
CREATE OR REPLACE FUNCTION prebuildd.notify_build_inserted() RETURNS trigger
    LANGUAGE plpgsql
AS $fn$
DECLARE
    -- Only constants here: a DECLARE initialiser runs outside the guarded block below.
    kind    text := 'build_inserted';
    tpl     uuid;
    failure text;
BEGIN
    BEGIN
        IF NEW.initiator_id IS NOT DISTINCT FROM 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid THEN
            -- The service's own writes (prebuildd.execute_actions) are not echoed back.
            IF pg_catalog.current_setting('prebuildd.own_writes', true) = 'on' THEN
                RETURN NULL;
            END IF;
            SELECT w.template_id INTO tpl
            FROM workspaces w
            WHERE w.id = NEW.workspace_id;
        ELSIF NEW.build_number IS DISTINCT FROM 1
              OR NEW.template_version_preset_id IS NULL
              OR NEW.transition IS DISTINCT FROM 'start' THEN
            RETURN NULL;
        ELSE
            kind := 'missed';
            SELECT v.template_id INTO tpl
            FROM template_version_presets p
            JOIN template_versions v ON v.id = p.template_version_id
            WHERE p.id = NEW.template_version_preset_id
              AND p.desired_instances IS NOT NULL;
        END IF;
        IF tpl IS NULL THEN
            RETURN NULL;
        END IF;
        IF pg_catalog.pg_notification_queue_usage() >= COALESCE(
               NULLIF(pg_catalog.current_setting('prebuildd.max_notify_queue_usage', true), '')
                   ::float8,
               0.5) THEN
            RAISE WARNING 'prebuildd: % event not sent: notification queue too full', kind;
            RETURN NULL;
        END IF;
        PERFORM pg_catalog.pg_notify('prebuildd_events', pg_catalog.format(
            '{"v":1,"k":"%s","t":"%s","at":%s}', kind, tpl,
            extract(epoch FROM pg_catalog.now())));
    EXCEPTION WHEN OTHERS THEN
        -- Nothing in here may raise: an error escaping this handler would fail Coder's write.
        failure := SQLSTATE;
        IF failure IN ('42804', 'XX000') THEN
            BEGIN
                DISCARD PLANS;
            EXCEPTION WHEN OTHERS THEN
                NULL;
            END;
        END IF;
        RAISE WARNING 'prebuildd: % event on % not sent (SQLSTATE %)%',
            kind, TG_TABLE_NAME, failure,
            CASE WHEN failure IN ('42703', '42804') THEN ': ' || SQLERRM ELSE '' END
            USING HINT = 'The periodic sweep catches up. After a Coder upgrade, check that '
                         'this prebuildd release supports it and run prebuildd migrate.';
    END;
    RETURN NULL;
END;
$fn$;

-- ---------------------------------------------------------------------------------------------
-- The rarely written tables: templates, presets, their schedules, the pause switch
-- ---------------------------------------------------------------------------------------------

-- TG_ARGV[0] is the event kind, which also tells the table.
CREATE OR REPLACE FUNCTION prebuildd.notify_event() RETURNS trigger
    LANGUAGE plpgsql
AS $fn$
DECLARE
    -- Only constants here: a DECLARE initialiser runs outside the guarded block below.
    kind    constant text := TG_ARGV[0];
    tpl     uuid;
    failure text;
BEGIN
    BEGIN
        -- Every branch either RETURNs (nothing to say) or sets `tpl`.
        IF kind = 'version_promoted' THEN
            -- templates, AFTER INSERT (a new template arrives with its active version, whose
            -- presets were inserted while the version had no template yet, so their own
            -- events carried nothing) and AFTER UPDATE of the active version.
            IF TG_OP = 'UPDATE'
               AND NEW.active_version_id IS NOT DISTINCT FROM OLD.active_version_id THEN
                RETURN NULL;
            END IF;
            tpl := NEW.id;

        ELSIF kind = 'template_changed' THEN
            -- templates, AFTER UPDATE (deleted, deprecated) and AFTER DELETE (Coder only
            -- soft-deletes; an operator's hard delete is the same news).
            IF TG_OP = 'DELETE' THEN
                tpl := OLD.id;
            ELSIF NEW.deleted IS NOT DISTINCT FROM OLD.deleted
                  AND NEW.deprecated IS NOT DISTINCT FROM OLD.deprecated THEN
                RETURN NULL;
            ELSE
                tpl := NEW.id;
            END IF;

        ELSIF kind = 'preset_changed' THEN
            -- template_version_presets, AFTER INSERT/UPDATE/DELETE. Not prebuild_status: the
            -- service writes it itself, and an event would only echo back.
            -- last_invalidated_at exists from Coder v2.29.0 on (docs/coder-compatibility.md):
            -- read by key from the whole row, so an older schema compares NULL with NULL
            -- instead of failing (presets change rarely; the row is small).
            IF TG_OP = 'UPDATE'
               AND NEW.desired_instances IS NOT DISTINCT FROM OLD.desired_instances
               AND NEW.invalidate_after_secs IS NOT DISTINCT FROM OLD.invalidate_after_secs
               AND NEW.scheduling_timezone IS NOT DISTINCT FROM OLD.scheduling_timezone
               AND (pg_catalog.to_jsonb(NEW) -> 'last_invalidated_at')
                   IS NOT DISTINCT FROM (pg_catalog.to_jsonb(OLD) -> 'last_invalidated_at') THEN
                RETURN NULL;
            END IF;
            SELECT v.template_id INTO tpl
            FROM template_versions v
            WHERE v.id = CASE WHEN TG_OP = 'DELETE' THEN OLD.template_version_id
                              ELSE NEW.template_version_id END;

        ELSIF kind = 'schedule_changed' THEN
            -- template_version_preset_prebuild_schedules, AFTER INSERT/UPDATE/DELETE; an
            -- update that rewrites the same values is no change.
            IF TG_OP = 'UPDATE' AND NEW IS NOT DISTINCT FROM OLD THEN
                RETURN NULL;
            END IF;
            SELECT v.template_id INTO tpl
            FROM template_version_presets p
            JOIN template_versions v ON v.id = p.template_version_id
            WHERE p.id = CASE WHEN TG_OP = 'DELETE' THEN OLD.preset_id ELSE NEW.preset_id END;

        ELSIF kind = 'settings_changed' THEN
            -- site_configs, AFTER INSERT/UPDATE/DELETE of key 'prebuilds_settings' (the pause
            -- switch). Coder writes settings with an upsert; rewriting the same value is no
            -- change. Global: the payload names no template.
            IF TG_OP = 'INSERT' THEN
                IF NEW.key IS DISTINCT FROM 'prebuilds_settings' THEN
                    RETURN NULL;
                END IF;
            ELSIF TG_OP = 'DELETE' THEN
                IF OLD.key IS DISTINCT FROM 'prebuilds_settings' THEN
                    RETURN NULL;
                END IF;
            ELSIF (NEW.key IS DISTINCT FROM 'prebuilds_settings'
                   AND OLD.key IS DISTINCT FROM 'prebuilds_settings')
                  OR NEW IS NOT DISTINCT FROM OLD THEN
                RETURN NULL;
            END IF;

        ELSE
            RETURN NULL;
        END IF;

        IF tpl IS NULL AND kind <> 'settings_changed' THEN
            RETURN NULL;
        END IF;
        IF pg_catalog.pg_notification_queue_usage() >= COALESCE(
               NULLIF(pg_catalog.current_setting('prebuildd.max_notify_queue_usage', true), '')
                   ::float8,
               0.5) THEN
            RAISE WARNING 'prebuildd: % event not sent: notification queue too full', kind;
            RETURN NULL;
        END IF;
        IF tpl IS NULL THEN
            PERFORM pg_catalog.pg_notify('prebuildd_events', pg_catalog.format(
                '{"v":1,"k":"%s","at":%s}', kind, extract(epoch FROM pg_catalog.now())));
        ELSE
            PERFORM pg_catalog.pg_notify('prebuildd_events', pg_catalog.format(
                '{"v":1,"k":"%s","t":"%s","at":%s}', kind, tpl,
                extract(epoch FROM pg_catalog.now())));
        END IF;
    EXCEPTION WHEN OTHERS THEN
        -- Nothing in here may raise: an error escaping this handler would fail Coder's write.
        failure := SQLSTATE;
        IF failure IN ('42804', 'XX000') THEN
            BEGIN
                DISCARD PLANS;
            EXCEPTION WHEN OTHERS THEN
                NULL;
            END;
        END IF;
        RAISE WARNING 'prebuildd: % event on % not sent (SQLSTATE %)%',
            kind, TG_TABLE_NAME, failure,
            CASE WHEN failure IN ('42703', '42804') THEN ': ' || SQLERRM ELSE '' END
            USING HINT = 'The periodic sweep catches up. After a Coder upgrade, check that '
                         'this prebuildd release supports it and run prebuildd migrate.';
    END;
    RETURN NULL;
END;
$fn$;

COMMENT ON FUNCTION prebuildd.notify_job_status() IS
    'prebuildd: NOTIFY prebuildd_events when a prebuild''s provisioner job changes status';
COMMENT ON FUNCTION prebuildd.notify_agent_ready() IS
    'prebuildd: NOTIFY prebuildd_events when a prebuild''s agent becomes or stops being ready';
COMMENT ON FUNCTION prebuildd.notify_claimed() IS
    'prebuildd: NOTIFY prebuildd_events when a prebuild is handed to a user';
COMMENT ON FUNCTION prebuildd.notify_build_inserted() IS
    'prebuildd: NOTIFY prebuildd_events when the prebuilds user starts a build, or a person '
    'builds a workspace from scratch although its preset keeps a pool (a miss)';
COMMENT ON FUNCTION prebuildd.notify_event() IS
    'prebuildd: NOTIFY prebuildd_events with {"v":1,"k":kind,"t":template,"at":epoch}';
