-- bench/demand.py: one template, one preset, people who claim or miss, and a provisioner
-- that works in simulated time. Every timestamp comes from a parameter (the simulation's
-- clock), never from now(): the history the forecast reads is the simulated one.
--
-- Ids: md5('demand-<label>')::uuid. People are 'demand-user-<n>'.

-- name: demand_seed
-- An organization, %(users)s people, a template whose active version (created a day before
-- the simulation starts) has the preset `small` wanting %(desired)s prebuilds.
WITH org AS (
    INSERT INTO organizations (id, name, description, created_at, updated_at, display_name)
    VALUES (md5('demand-org')::uuid, 'demand', '', %(at)s, %(at)s, 'Demand')
    RETURNING id
), people AS (
    INSERT INTO users (id, email, username, name, hashed_password, created_at, updated_at,
                       status, login_type)
    SELECT md5('demand-user-' || n)::uuid, 'user' || n || '@demand.invalid', 'user' || n,
           'User ' || n, ''::bytea, %(at)s, %(at)s, 'active', 'password'
    FROM generate_series(1, %(users)s::int) AS n
    RETURNING id
), import_job AS (
    INSERT INTO provisioner_jobs (id, created_at, updated_at, started_at, completed_at,
                                  organization_id, initiator_id, provisioner, storage_method,
                                  type, input, worker_id, file_id, tags)
    SELECT md5('demand-import')::uuid, %(at)s, %(at)s, %(at)s, %(at)s, org.id,
           md5('demand-user-1')::uuid, 'terraform', 'file', 'template_version_import',
           '{}'::jsonb, md5('demand-worker')::uuid, md5('demand-file')::uuid,
           '{"scope": "organization", "owner": ""}'::jsonb
    FROM org
    WHERE (SELECT count(*) FROM people) > 0
    RETURNING id
), tpl AS (
    INSERT INTO templates (id, created_at, updated_at, organization_id, name, display_name,
                           provisioner, active_version_id, created_by)
    SELECT md5('demand-template')::uuid, %(at)s, %(at)s, org.id, 'python', 'python',
           'terraform', md5('demand-version')::uuid, md5('demand-user-1')::uuid
    FROM org, import_job
    RETURNING id, organization_id
), version AS (
    INSERT INTO template_versions (id, template_id, organization_id, created_at, updated_at,
                                   name, readme, job_id, created_by)
    SELECT md5('demand-version')::uuid, tpl.id, tpl.organization_id, %(at)s, %(at)s, 'v1', '',
           md5('demand-import')::uuid, md5('demand-user-1')::uuid
    FROM tpl
    RETURNING id
), preset AS (
    INSERT INTO template_version_presets (id, template_version_id, name, desired_instances,
                                          created_at)
    SELECT md5('demand-preset')::uuid, version.id, 'small', %(desired)s::int, %(at)s
    FROM version
    RETURNING id
)
INSERT INTO template_version_preset_parameters (template_version_preset_id, name, value)
SELECT preset.id, 'size', 'small'
FROM preset;

-- name: demand_policy
SELECT * FROM prebuildd.set_autoscale_policy(
    md5('demand-preset')::uuid, %(mode)s::text, %(min_instances)s::int, %(max_instances)s::int
);

-- name: demand_next_due
-- When the provisioner finishes its next job: a prebuild's create (build 1 of the prebuilds
-- user) and a person's fresh workspace (a miss) take %(build)s, anything else (a claim's
-- build, a delete) %(short)s.
SELECT min(j.created_at + CASE WHEN b.build_number = 1 AND b.transition = 'start'
                               THEN %(build)s::interval ELSE %(short)s::interval END)
FROM provisioner_jobs AS j
JOIN workspace_builds AS b ON b.job_id = j.id
WHERE j.completed_at IS NULL
  AND j.canceled_at IS NULL;

-- name: demand_complete_due
-- Complete every job due by %(now)s, each at its own due time, as a provisioner would: a
-- succeeded start gets a resource and a ready agent; a delete marks the workspace deleted.
WITH due AS MATERIALIZED (
    SELECT
        j.id AS job_id,
        b.workspace_id,
        b.transition,
        j.created_at + CASE WHEN b.build_number = 1 AND b.transition = 'start'
                            THEN %(build)s::interval ELSE %(short)s::interval END AS done_at
    FROM provisioner_jobs AS j
    JOIN workspace_builds AS b ON b.job_id = j.id
    WHERE j.completed_at IS NULL
      AND j.canceled_at IS NULL
), finished AS (
    UPDATE provisioner_jobs AS j
    SET started_at = j.created_at,
        completed_at = d.done_at,
        updated_at = d.done_at,
        worker_id = md5('demand-worker')::uuid
    FROM due AS d
    WHERE j.id = d.job_id
      AND d.done_at <= %(now)s::timestamptz
    RETURNING j.id, d.workspace_id, d.transition, d.done_at
), resources AS (
    INSERT INTO workspace_resources (id, created_at, job_id, transition, type, name)
    SELECT md5('demand-resource-' || f.id)::uuid, f.done_at, f.id, 'start', 'simulated_vm',
           'vm'
    FROM finished AS f
    WHERE f.transition = 'start'
    RETURNING id, created_at
), agents AS (
    INSERT INTO workspace_agents (id, created_at, updated_at, name, resource_id, auth_token,
                                  architecture, operating_system, lifecycle_state)
    SELECT md5('demand-agent-' || r.id)::uuid, r.created_at, r.created_at, 'main', r.id,
           gen_random_uuid(), 'amd64', 'linux', 'ready'
    FROM resources AS r
    RETURNING id
), gone AS (
    UPDATE workspaces AS w
    SET deleted = true, updated_at = f.done_at
    FROM finished AS f
    WHERE w.id = f.workspace_id
      AND f.transition = 'delete'
    RETURNING w.id
)
SELECT (SELECT count(*) FROM finished), (SELECT count(*) FROM agents), (SELECT count(*) FROM gone);

-- name: demand_miss
-- No prebuild to claim: the person's workspace is built from scratch, as Coder does -- a new
-- workspace whose build 1 (`start`, initiated by the person) names the preset.
WITH ws AS (
    INSERT INTO workspaces (id, created_at, updated_at, owner_id, organization_id, template_id,
                            name, last_used_at)
    VALUES (gen_random_uuid(), %(now)s, %(now)s, %(user_id)s, md5('demand-org')::uuid,
            md5('demand-template')::uuid, %(name)s, %(now)s)
    RETURNING id
), job AS (
    INSERT INTO provisioner_jobs (id, created_at, updated_at, organization_id, initiator_id,
                                  provisioner, storage_method, type, input, file_id, tags)
    VALUES (gen_random_uuid(), %(now)s, %(now)s, md5('demand-org')::uuid, %(user_id)s,
            'terraform', 'file', 'workspace_build', '{}'::jsonb, md5('demand-file')::uuid,
            '{"scope": "organization", "owner": ""}'::jsonb)
    RETURNING id
), build AS (
    INSERT INTO workspace_builds (id, created_at, updated_at, workspace_id, template_version_id,
                                  build_number, transition, initiator_id, job_id, reason,
                                  template_version_preset_id)
    SELECT gen_random_uuid(), %(now)s, %(now)s, ws.id, md5('demand-version')::uuid, 1, 'start',
           %(user_id)s, job.id, 'initiator', md5('demand-preset')::uuid
    FROM ws, job
    RETURNING id
)
INSERT INTO workspace_build_parameters (workspace_build_id, name, value)
SELECT build.id, 'size', 'small'
FROM build;

-- name: demand_pool
-- Idle prebuilds right now: the prebuilds user's live workspaces whose latest build is a
-- succeeded start (what a person could claim, or soon could).
SELECT count(*)
FROM workspaces AS w
CROSS JOIN LATERAL (
    SELECT b.transition, b.job_id
    FROM workspace_builds AS b
    WHERE b.workspace_id = w.id
    ORDER BY b.build_number DESC
    LIMIT 1
) AS lb
JOIN provisioner_jobs AS j ON j.id = lb.job_id
WHERE w.template_id = md5('demand-template')::uuid
  AND w.owner_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
  AND NOT w.deleted
  AND lb.transition = 'start'
  AND j.job_status = 'succeeded';

-- name: demand_created
-- Prebuilds created in [%(since)s, %(until)s).
SELECT count(*)
FROM workspace_builds AS b
WHERE b.template_version_preset_id = md5('demand-preset')::uuid
  AND b.build_number = 1
  AND b.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
  AND b.created_at >= %(since)s::timestamptz
  AND b.created_at < %(until)s::timestamptz;

-- ---------------------------------------------------------------------------------------------
-- `--part reads`: what demand costs the reads of a big fleet (bench/fleet.py's `spec`)
-- ---------------------------------------------------------------------------------------------

-- name: demand_reads_presets_everywhere
-- Coder names a preset on most builds of a workspace created from one (it matches the
-- parameters); the fleet leaves people's builds without one. Give each the first preset (by
-- name) of its build's version, so every read by preset sees the rows it would see on a real
-- deployment.
UPDATE workspace_builds AS b
SET template_version_preset_id = p.id
FROM (
    SELECT DISTINCT ON (pr.template_version_id) pr.template_version_id, pr.id
    FROM template_version_presets AS pr
    ORDER BY pr.template_version_id, pr.name, pr.id
) AS p
WHERE p.template_version_id = b.template_version_id
  AND b.template_version_preset_id IS NULL;

-- name: demand_reads_busy_template
-- A busy template: %(workspaces)s more people's workspaces of template %(template_id)s, each
-- created from its preset %(preset_id)s at a random moment of the last 14 days (build 1: a
-- miss) and then stopped and started twice a day (builds naming the preset, by the owner),
-- up to %(now)s. What the forecast's 14-day read of that template has to go through.
WITH people AS (
    SELECT md5('bench-user-' || (1 + mod(k, 50)))::uuid AS owner_id, k,
           %(now)s::timestamptz - random() * interval '14 days' AS born
    FROM generate_series(1, %(workspaces)s::int) AS k
), ws AS (
    INSERT INTO workspaces (id, created_at, updated_at, owner_id, organization_id, template_id,
                            name, last_used_at)
    SELECT md5('busy-ws-' || p.k)::uuid, p.born, p.born, p.owner_id, t.organization_id, t.id,
           'busy-' || p.k, p.born
    FROM people AS p
    JOIN templates AS t ON t.id = %(template_id)s
    RETURNING id, created_at, owner_id, organization_id
), plan AS (
    SELECT ws.id AS workspace_id, ws.owner_id, ws.organization_id, n,
           ws.created_at + (n - 1) * interval '12 hours' AS at,
           md5('busy-build-' || ws.id || '-' || n)::uuid AS build_id,
           md5('busy-job-' || ws.id || '-' || n)::uuid AS job_id
    FROM ws
    CROSS JOIN LATERAL generate_series(1, 1 + floor(extract(epoch FROM %(now)s::timestamptz
                                                    - ws.created_at) / 43200)::int) AS n
), jobs AS (
    INSERT INTO provisioner_jobs (id, created_at, updated_at, started_at, completed_at,
                                  organization_id, initiator_id, provisioner, storage_method,
                                  type, input, worker_id, file_id, tags)
    SELECT pl.job_id, pl.at, pl.at, pl.at, pl.at + interval '3 minutes', pl.organization_id,
           pl.owner_id, 'terraform', 'file', 'workspace_build', '{}'::jsonb,
           md5('bench-worker')::uuid, md5('bench-file')::uuid,
           '{"scope": "organization", "owner": ""}'::jsonb
    FROM plan AS pl
    RETURNING id
)
INSERT INTO workspace_builds (id, created_at, updated_at, workspace_id, template_version_id,
                              build_number, transition, initiator_id, job_id, reason,
                              template_version_preset_id)
SELECT pl.build_id, pl.at, pl.at, pl.workspace_id, p.template_version_id, pl.n,
       CASE WHEN mod(pl.n, 2) = 0 THEN 'stop' ELSE 'start' END::workspace_transition,
       pl.owner_id, pl.job_id, 'initiator', p.id
FROM plan AS pl
JOIN template_version_presets AS p ON p.id = %(preset_id)s
WHERE (SELECT count(*) FROM jobs) > 0;

-- name: demand_reads_counts
-- What the busy template's 14-day read goes through: builds naming its presets in the window.
SELECT count(*)
FROM workspace_builds AS b
JOIN template_version_presets AS p ON p.id = b.template_version_preset_id
JOIN template_versions AS v ON v.id = p.template_version_id
WHERE v.template_id = %(template_id)s
  AND b.created_at >= %(now)s::timestamptz - interval '14 days';

-- name: demand_reads_policy
-- Switch the busy preset's policy between rounds (untimed): off (no demand read) or auto.
INSERT INTO prebuildd.autoscale_policies (template_id, preset_name, mode, min_instances,
                                          max_instances)
SELECT v.template_id, p.name, %(mode)s, 0, 10
FROM template_version_presets AS p
JOIN template_versions AS v ON v.id = p.template_version_id
WHERE p.id = %(preset_id)s
ON CONFLICT (template_id, preset_name) DO UPDATE SET mode = EXCLUDED.mode;

-- name: demand_reads_analyze
ANALYZE workspace_builds;

-- ---------------------------------------------------------------------------------------------
-- The simulated clock
-- ---------------------------------------------------------------------------------------------

-- name: demand_sim_clock
-- prebuildd plans at the database's now(), read in the snapshot's pipeline
-- (service/prebuildd/clock.py), so the simulation's clock must be the database's -- for the
-- bench's own session only. These functions return the simulated instant set in `bench.now`;
-- a session whose search_path lists schema bench_sim before pg_catalog (demand_sim_session)
-- resolves now() and clock_timestamp() to them, since pg_catalog is searched where the path
-- lists it. Every other session, and prebuildd's own functions (their search_path is pinned),
-- keep the server's clock.
CREATE SCHEMA IF NOT EXISTS bench_sim;
CREATE OR REPLACE FUNCTION bench_sim.now() RETURNS timestamptz
    LANGUAGE sql STABLE
    AS $fn$ SELECT pg_catalog.current_setting('bench.now')::timestamptz $fn$;
CREATE OR REPLACE FUNCTION bench_sim.clock_timestamp() RETURNS timestamptz
    LANGUAGE sql VOLATILE
    AS $fn$ SELECT pg_catalog.current_setting('bench.now')::timestamptz $fn$;

-- name: demand_sim_session
SELECT pg_catalog.set_config(
    'search_path', 'bench_sim, pg_catalog, ' || pg_catalog.current_setting('search_path'), false
);

-- name: demand_sim_now
SELECT pg_catalog.set_config('bench.now', %(now)s::timestamptz::text, false);
