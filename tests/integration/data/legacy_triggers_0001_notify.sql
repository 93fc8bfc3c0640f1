-- Event source: row triggers on Coder's tables that NOTIFY channel `prebuildd_events` when
-- something a prebuild pool depends on changes. The service LISTENs and reconciles only the
-- template named in the payload (SPEC section 4).
--
-- Repeatable migration: `prebuildd migrate` re-runs this whole file (in one transaction)
-- whenever its checksum changes, so every statement is idempotent.
--
-- Payload (compact JSON, always < 200 bytes):
--     {"v":1,"k":"<kind>","t":"<template uuid>","at":<epoch seconds of now()>}
-- "t" is absent for global kinds (settings_changed). "at" is the *transaction start*, so all
-- rows of one (kind, template) touched by one transaction produce byte-identical payloads,
-- and PostgreSQL delivers identical payloads of one transaction only once: a statement that
-- updates 100 jobs of one template sends one notification, not 100.
--
-- Cost on Coder's hot paths. Every trigger is a row-level AFTER trigger whose column list
-- (`UPDATE OF`) and `WHEN` clause are checked by the executor before any function is called:
-- a provisioner heartbeat (updated_at only), an agent's connection bookkeeping or a log
-- append never enters PL/pgSQL. The function runs only on a real transition, and then does
-- one small query over primary/unique keys to find the template and to tell prebuilds from
-- user workspaces.
--
-- Privileges. Triggers fire with the privileges of whoever writes the row (Coder's role).
-- Executing a trigger function needs no privilege on its schema, but calling another function
-- would: so there is deliberately one self-contained function and no helper calls, and the
-- lookups name Coder's tables unqualified, resolved by the writer's search_path like Coder's
-- own queries.
--
-- Failure modes for Coder's writes: the function has no error path of its own. NOTIFY itself
-- fails only when the server's notification queue is full (8 GB by default), which takes a
-- session that LISTENs and stops reading; prebuildd's listener reads continuously, probes
-- its connection and reconnects (service/prebuildd/listener.py).

CREATE SCHEMA IF NOT EXISTS prebuildd;

-- TG_ARGV[0] is the event kind; the table decides how the template is found. A NULL template
-- for a per-template kind means "not ours" (a user's workspace, a version not yet attached to
-- a template): nothing is sent.
CREATE OR REPLACE FUNCTION prebuildd.notify_event() RETURNS trigger
    LANGUAGE plpgsql
AS $fn$
DECLARE
    kind        text := TG_ARGV[0];
    prebuilds   constant uuid := 'c42fdf75-3097-471c-8c33-fb52454d81c0';
    template_id uuid;
BEGIN
    IF TG_TABLE_NAME = 'site_configs' THEN
        -- The pause switch applies to every template: a global event without "t".
        PERFORM pg_catalog.pg_notify('prebuildd_events', format(
            '{"v":1,"k":"%s","at":%s}', kind, extract(epoch FROM now())));
        RETURN NULL;
    ELSIF TG_TABLE_NAME = 'templates' THEN
        template_id := CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END;
    ELSIF TG_TABLE_NAME = 'workspaces' THEN
        template_id := NEW.template_id;
    ELSIF TG_TABLE_NAME = 'template_version_presets' THEN
        SELECT v.template_id INTO template_id
        FROM template_versions v
        WHERE v.id = CASE WHEN TG_OP = 'DELETE' THEN OLD.template_version_id
                          ELSE NEW.template_version_id END;
    ELSIF TG_TABLE_NAME = 'template_version_preset_prebuild_schedules' THEN
        SELECT v.template_id INTO template_id
        FROM template_version_presets p
        JOIN template_versions v ON v.id = p.template_version_id
        WHERE p.id = CASE WHEN TG_OP = 'DELETE' THEN OLD.preset_id ELSE NEW.preset_id END;
    ELSIF TG_TABLE_NAME = 'workspace_builds' THEN
        SELECT w.template_id INTO template_id
        FROM workspaces w
        WHERE w.id = NEW.workspace_id;
    ELSIF TG_TABLE_NAME = 'provisioner_jobs' THEN
        -- A prebuild's job: its build was started by the prebuilds user (creates, deletes) or
        -- the workspace still belongs to it. A claimed workspace's jobs are the user's.
        SELECT w.template_id INTO template_id
        FROM workspace_builds b
        JOIN workspaces w ON w.id = b.workspace_id
        WHERE b.job_id = NEW.id
          AND (b.initiator_id = prebuilds OR w.owner_id = prebuilds);
    ELSIF TG_TABLE_NAME = 'workspace_agents' THEN
        -- Readiness makes a prebuild claimable; agents of claimed workspaces are not ours.
        SELECT w.template_id INTO template_id
        FROM workspace_resources r
        JOIN workspace_builds b ON b.job_id = r.job_id
        JOIN workspaces w ON w.id = b.workspace_id
        WHERE r.id = NEW.resource_id
          AND w.owner_id = prebuilds;
    END IF;

    IF template_id IS NOT NULL THEN
        PERFORM pg_catalog.pg_notify('prebuildd_events', format(
            '{"v":1,"k":"%s","t":"%s","at":%s}', kind, template_id, extract(epoch FROM now())));
    END IF;
    RETURN NULL;
END;
$fn$;

COMMENT ON FUNCTION prebuildd.notify_event() IS
    'prebuildd: NOTIFY prebuildd_events with {"v":1,"k":kind,"t":template,"at":epoch}';

-- ---------------------------------------------------------------------------------------------
-- templates: promotion, deletion, deprecation
-- ---------------------------------------------------------------------------------------------

-- A new template arrives with its active version (whose presets were inserted while the
-- version had no template yet, so their own events carried nothing): treat it as a promotion.
DROP TRIGGER IF EXISTS prebuildd_template_inserted ON templates;
CREATE TRIGGER prebuildd_template_inserted
    AFTER INSERT ON templates
    FOR EACH ROW EXECUTE FUNCTION prebuildd.notify_event('version_promoted');

DROP TRIGGER IF EXISTS prebuildd_version_promoted ON templates;
CREATE TRIGGER prebuildd_version_promoted
    AFTER UPDATE OF active_version_id ON templates
    FOR EACH ROW
    WHEN (OLD.active_version_id IS DISTINCT FROM NEW.active_version_id)
    EXECUTE FUNCTION prebuildd.notify_event('version_promoted');

DROP TRIGGER IF EXISTS prebuildd_template_changed ON templates;
CREATE TRIGGER prebuildd_template_changed
    AFTER UPDATE OF deleted, deprecated ON templates
    FOR EACH ROW
    WHEN (OLD.deleted IS DISTINCT FROM NEW.deleted
          OR OLD.deprecated IS DISTINCT FROM NEW.deprecated)
    EXECUTE FUNCTION prebuildd.notify_event('template_changed');

-- Coder only soft-deletes templates; a hard delete (an operator's cleanup) is the same news.
DROP TRIGGER IF EXISTS prebuildd_template_removed ON templates;
CREATE TRIGGER prebuildd_template_removed
    AFTER DELETE ON templates
    FOR EACH ROW EXECUTE FUNCTION prebuildd.notify_event('template_changed');

-- ---------------------------------------------------------------------------------------------
-- presets and their schedules
-- ---------------------------------------------------------------------------------------------

DROP TRIGGER IF EXISTS prebuildd_preset_added_or_removed ON template_version_presets;
CREATE TRIGGER prebuildd_preset_added_or_removed
    AFTER INSERT OR DELETE ON template_version_presets
    FOR EACH ROW EXECUTE FUNCTION prebuildd.notify_event('preset_changed');

-- Not prebuild_status: the service writes it itself, and an event would only echo back.
-- last_invalidated_at is optional (Coder v2.29.0 and later): read from the whole row, by
-- name, so that the trigger can be created on older schemas too; hence no column list.
DROP TRIGGER IF EXISTS prebuildd_preset_changed ON template_version_presets;
CREATE TRIGGER prebuildd_preset_changed
    AFTER UPDATE ON template_version_presets
    FOR EACH ROW
    WHEN (OLD.desired_instances IS DISTINCT FROM NEW.desired_instances
          OR OLD.invalidate_after_secs IS DISTINCT FROM NEW.invalidate_after_secs
          OR OLD.scheduling_timezone IS DISTINCT FROM NEW.scheduling_timezone
          OR (to_jsonb(OLD) -> 'last_invalidated_at')
             IS DISTINCT FROM (to_jsonb(NEW) -> 'last_invalidated_at'))
    EXECUTE FUNCTION prebuildd.notify_event('preset_changed');

DROP TRIGGER IF EXISTS prebuildd_schedule_added_or_removed
    ON template_version_preset_prebuild_schedules;
CREATE TRIGGER prebuildd_schedule_added_or_removed
    AFTER INSERT OR DELETE ON template_version_preset_prebuild_schedules
    FOR EACH ROW EXECUTE FUNCTION prebuildd.notify_event('schedule_changed');

DROP TRIGGER IF EXISTS prebuildd_schedule_changed ON template_version_preset_prebuild_schedules;
CREATE TRIGGER prebuildd_schedule_changed
    AFTER UPDATE ON template_version_preset_prebuild_schedules
    FOR EACH ROW
    WHEN (OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION prebuildd.notify_event('schedule_changed');

-- ---------------------------------------------------------------------------------------------
-- builds and jobs of prebuilds (Coder's hottest tables: filtered before any function call)
-- ---------------------------------------------------------------------------------------------

DROP TRIGGER IF EXISTS prebuildd_build_inserted ON workspace_builds;
CREATE TRIGGER prebuildd_build_inserted
    AFTER INSERT ON workspace_builds
    FOR EACH ROW
    WHEN (NEW.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid)
    EXECUTE FUNCTION prebuildd.notify_event('build_inserted');

-- job_status is generated from these four columns: an UPDATE that sets none of them (the
-- heartbeat's updated_at, log length, worker bookkeeping) never evaluates the WHEN clause;
-- one that sets them without changing the status (a re-sent completion) stops at WHEN.
-- Stored generated columns are computed before AFTER triggers, so WHEN may read them.
-- Only jobs the prebuilds user initiated (prebuildd's creates and deletes): users' jobs are
-- the bulk of Coder's traffic and must not pay for a function call and a lookup on every
-- status change (bench/trigger_overhead.py). The price: a build someone else starts on an
-- unclaimed prebuild (an admin stopping one by hand, rare) is noticed by the next sweep.
DROP TRIGGER IF EXISTS prebuildd_job_status ON provisioner_jobs;
CREATE TRIGGER prebuildd_job_status
    AFTER UPDATE OF started_at, completed_at, canceled_at, error ON provisioner_jobs
    FOR EACH ROW
    WHEN (NEW.type = 'workspace_build'::provisioner_job_type
          AND NEW.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
          AND OLD.job_status IS DISTINCT FROM NEW.job_status)
    EXECUTE FUNCTION prebuildd.notify_event('job_status');

-- ---------------------------------------------------------------------------------------------
-- claims and readiness
-- ---------------------------------------------------------------------------------------------

DROP TRIGGER IF EXISTS prebuildd_claimed ON workspaces;
CREATE TRIGGER prebuildd_claimed
    AFTER UPDATE OF owner_id ON workspaces
    FOR EACH ROW
    WHEN (OLD.owner_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
          AND NEW.owner_id IS DISTINCT FROM OLD.owner_id)
    EXECUTE FUNCTION prebuildd.notify_event('claimed');

-- Becoming ready makes a prebuild eligible; leaving ready makes it ineligible. Agents the
-- (simulated) provisioner inserts already ready count as becoming ready.
DROP TRIGGER IF EXISTS prebuildd_agent_ready ON workspace_agents;
CREATE TRIGGER prebuildd_agent_ready
    AFTER UPDATE OF lifecycle_state ON workspace_agents
    FOR EACH ROW
    WHEN ((OLD.lifecycle_state = 'ready'::workspace_agent_lifecycle_state)
          IS DISTINCT FROM (NEW.lifecycle_state = 'ready'::workspace_agent_lifecycle_state))
    EXECUTE FUNCTION prebuildd.notify_event('agent_ready');

DROP TRIGGER IF EXISTS prebuildd_agent_inserted_ready ON workspace_agents;
CREATE TRIGGER prebuildd_agent_inserted_ready
    AFTER INSERT ON workspace_agents
    FOR EACH ROW
    WHEN (NEW.lifecycle_state = 'ready'::workspace_agent_lifecycle_state)
    EXECUTE FUNCTION prebuildd.notify_event('agent_ready');

-- ---------------------------------------------------------------------------------------------
-- the pause switch (site_configs key prebuilds_settings); global
-- ---------------------------------------------------------------------------------------------

DROP TRIGGER IF EXISTS prebuildd_settings_inserted ON site_configs;
CREATE TRIGGER prebuildd_settings_inserted
    AFTER INSERT ON site_configs
    FOR EACH ROW
    WHEN (NEW.key = 'prebuilds_settings')
    EXECUTE FUNCTION prebuildd.notify_event('settings_changed');

-- Coder writes settings with an upsert; rewriting the same value is no change.
DROP TRIGGER IF EXISTS prebuildd_settings_updated ON site_configs;
CREATE TRIGGER prebuildd_settings_updated
    AFTER UPDATE ON site_configs
    FOR EACH ROW
    WHEN ((OLD.key = 'prebuilds_settings' OR NEW.key = 'prebuilds_settings')
          AND OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION prebuildd.notify_event('settings_changed');

DROP TRIGGER IF EXISTS prebuildd_settings_deleted ON site_configs;
CREATE TRIGGER prebuildd_settings_deleted
    AFTER DELETE ON site_configs
    FOR EACH ROW
    WHEN (OLD.key = 'prebuilds_settings')
    EXECUTE FUNCTION prebuildd.notify_event('settings_changed');
