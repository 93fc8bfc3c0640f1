-- A Coder-shaped fleet for the benchmarks (bench/fleet.py), written set-based: a few
-- INSERT ... SELECT over generate_series per chunk of templates, never a row at a time.
--
-- Ids that benches need to find again are derived, not random: md5(label)::uuid with labels
-- 'bench-template-<n>', 'bench-version-<n>-<v>', 'bench-preset-<n>-<v>-<p>', 'bench-org-<o>',
-- 'bench-user-<u>' (bench/fleet.py computes the same ids in Python). Version <versions> is
-- the active one. Every template has the same shape, so template 1 of a 10-template fleet
-- and template 1 of a 10,000-template fleet hold exactly the same rows.
--
-- Per active preset (desired = ready + not_ready + starting):
--   ready       running prebuilds, latest build a succeeded start, agent ready (claimable)
--   not_ready   running prebuilds whose agent is still starting
--   starting    prebuilds whose first build's job is pending (odd k) or running (even k)
--   failed      prebuilds whose only build failed two hours ago (kept as evidence; outside
--               the default 1 h backoff lookback, so they do not hold creates)
--   history     deleted prebuilds: start + delete, days ago
--   claimed     former prebuilds now owned by a user: the prebuild's start, the claim's
--               start, then stop/start builds by the user
-- Per template: `user_workspaces` ordinary workspaces with `user_builds` alternating
-- start/stop builds by their owner, the older ones on the previous version.
-- Drift (templates with n mod drift_every = 1): the first active preset wants one more
-- prebuild than it has, and preset 1 of the previous version still has one running prebuild
-- and one never-picked-up pending job -- one create, one delete and one cancel to do.
-- Schedules (templates with n mod schedule_every = 0): active preset 1 has a weekday cron
-- schedule (same count as its desired_instances, so the plan does not depend on the clock)
-- read in Europe/Berlin.
-- Every succeeded start build has one resource and one agent (the latest build's agent in
-- its real state, older ones 'off').
--
-- Statements without a `%(...)s` placeholder after the temp tables read only from them.

-- name: seed_organizations
INSERT INTO organizations (id, name, description, created_at, updated_at, is_default, display_name)
SELECT
    md5('bench-org-' || o)::uuid, 'bench-org-' || o, '', now(), now(), o = 1, 'Bench org ' || o
FROM generate_series(1, %(organizations)s::int) AS o;

-- name: seed_users
INSERT INTO users (
    id, email, username, name, hashed_password, created_at, updated_at, status, login_type
)
SELECT
    md5('bench-user-' || u)::uuid, 'user' || u || '@bench.invalid', 'user' || u, 'User ' || u,
    ''::bytea, now() - interval '500 days', now(), 'active', 'password'
FROM generate_series(1, %(users)s::int) AS u;

-- name: chunk_templates
CREATE TEMP TABLE bench_tpl ON COMMIT DROP AS
SELECT
    n,
    md5('bench-template-' || n)::uuid AS id,
    md5('bench-org-' || (1 + mod(n, %(organizations)s::int)))::uuid AS org_id,
    %(drift_every)s::int > 0 AND mod(n, %(drift_every)s::int) = mod(1, %(drift_every)s::int)
        AS drift,
    %(schedule_every)s::int > 0 AND mod(n, %(schedule_every)s::int) = 0 AS scheduled
FROM generate_series(%(first)s::int, %(last)s::int) AS n;

-- name: chunk_versions
CREATE TEMP TABLE bench_ver ON COMMIT DROP AS
SELECT
    t.n,
    v,
    md5('bench-version-' || t.n || '-' || v)::uuid AS id,
    md5('bench-import-' || t.n || '-' || v)::uuid AS job_id,
    md5('bench-file-' || t.n || '-' || v)::uuid AS file_id,
    t.id AS template_id,
    t.org_id,
    now() - (%(versions)s::int - v + 1) * interval '30 days' AS created_at,
    v = %(versions)s::int AS active
FROM bench_tpl AS t
CROSS JOIN generate_series(1, %(versions)s::int) AS v;

-- name: chunk_presets
CREATE TEMP TABLE bench_pre ON COMMIT DROP AS
SELECT
    v.n,
    v.v,
    p,
    md5('bench-preset-' || v.n || '-' || v.v || '-' || p)::uuid AS id,
    v.id AS version_id,
    v.template_id,
    v.org_id,
    v.active,
    v.created_at,
    t.drift,
    t.scheduled AND v.active AND p = 1 AS scheduled,
    %(ready)s::int + %(not_ready)s::int + %(starting)s::int
        + CASE WHEN t.drift AND v.active AND p = 1 THEN 1 ELSE 0 END AS desired
FROM bench_ver AS v
JOIN bench_tpl AS t ON t.n = v.n
CROSS JOIN LATERAL generate_series(
    1, CASE WHEN v.active THEN %(active_presets)s::int ELSE %(old_presets)s::int END
) AS p;

-- name: chunk_workspaces
-- One row per workspace to create, with what its builds will look like.
CREATE TEMP TABLE bench_ws ON COMMIT DROP AS
WITH pool (kind, per_preset, builds) AS (
    VALUES
        ('ready', %(ready)s::int, 1),
        ('not_ready', %(not_ready)s::int, 1),
        ('starting', %(starting)s::int, 1),
        ('failed', %(failed)s::int, 1),
        ('history', %(history)s::int, 2),
        ('claimed', %(claimed)s::int, %(claimed_builds)s::int)
),
prebuilt AS (
    SELECT p.n, p.template_id, p.org_id, p.id AS preset_id, p.v, p.p,
           pool.kind, k, pool.builds
    FROM bench_pre AS p
    JOIN pool ON p.active
    CROSS JOIN LATERAL generate_series(1, pool.per_preset) AS k
    UNION ALL
    SELECT p.n, p.template_id, p.org_id, p.id, p.v, p.p, leftover.kind, 1, 1
    FROM bench_pre AS p
    CROSS JOIN (VALUES ('old_running'), ('old_pending')) AS leftover (kind)
    WHERE p.drift AND p.v = %(versions)s::int - 1 AND p.p = 1
)
SELECT
    gen_random_uuid() AS id,
    pb.n,
    pb.template_id,
    pb.org_id,
    CASE
        WHEN pb.kind = 'claimed'
            THEN md5('bench-user-' || (1 + mod(pb.n * 31 + pb.p * 7 + pb.k, %(users)s::int)))::uuid
        ELSE 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
    END AS owner_id,
    pb.kind,
    pb.k,
    pb.preset_id,
    pb.v,
    pb.builds,
    now() - CASE pb.kind
        WHEN 'ready' THEN interval '3 hours' + pb.k * interval '1 minute'
        WHEN 'not_ready' THEN interval '5 minutes'
        WHEN 'starting' THEN interval '2 minutes'
        WHEN 'failed' THEN interval '2 hours' + pb.k * interval '1 minute'
        WHEN 'history' THEN (10 + 3 * pb.k) * interval '1 day'
        WHEN 'claimed' THEN (pb.builds + 5 + 2 * pb.k) * interval '1 day'
        WHEN 'old_running' THEN interval '20 days'
        ELSE interval '10 minutes'
    END AS created_at,
    pb.kind = 'history' AS deleted
FROM prebuilt AS pb
UNION ALL
SELECT
    gen_random_uuid(),
    t.n,
    t.id,
    t.org_id,
    md5('bench-user-' || (1 + mod(t.n * 31 + k * 17, %(users)s::int)))::uuid,
    'user',
    k,
    NULL,
    %(versions)s::int,
    %(user_builds)s::int,
    now() - (%(user_builds)s::int + 30 + mod(k * 13, 300)) * interval '1 day',
    false
FROM bench_tpl AS t
CROSS JOIN generate_series(1, %(user_workspaces)s::int) AS k;

-- name: chunk_builds
-- One row per build (and its job). Transition, initiator, version, preset and job status
-- follow the workspace's kind and the build number.
CREATE TEMP TABLE bench_build ON COMMIT DROP AS
SELECT
    gen_random_uuid() AS id,
    gen_random_uuid() AS job_id,
    w.id AS workspace_id,
    w.kind,
    w.org_id,
    bn,
    bn = w.builds AS latest,
    CASE
        WHEN w.kind = 'history' AND bn = 2 THEN 'delete'
        WHEN w.kind = 'claimed' AND bn > 2 AND mod(bn, 2) = 1 THEN 'stop'
        WHEN w.kind = 'user' AND mod(bn, 2) = 0 THEN 'stop'
        ELSE 'start'
    END::workspace_transition AS transition,
    CASE
        WHEN w.kind = 'user' OR (w.kind = 'claimed' AND bn > 1) THEN w.owner_id
        ELSE 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
    END AS initiator_id,
    md5('bench-version-' || w.n || '-' || ver.v)::uuid AS version_id,
    -- The version's import job's file: what Coder's builder copies onto the build's job.
    md5('bench-file-' || w.n || '-' || ver.v)::uuid AS file_id,
    CASE WHEN w.kind = 'user' OR (w.kind = 'claimed' AND bn > 2) THEN NULL ELSE w.preset_id END
        AS preset_id,
    CASE
        WHEN w.kind = 'starting' AND mod(w.k, 2) = 1 THEN 'pending'
        WHEN w.kind = 'starting' THEN 'running'
        WHEN w.kind = 'old_pending' THEN 'pending'
        WHEN w.kind = 'failed' THEN 'failed'
        ELSE 'succeeded'
    END AS status,
    CASE
        WHEN bn < w.builds THEN 'off'
        WHEN w.kind = 'not_ready' THEN 'starting'
        ELSE 'ready'
    END AS agent_state,
    w.created_at + (bn - 1) * interval '1 day' AS created_at
FROM bench_ws AS w
CROSS JOIN LATERAL generate_series(1, w.builds) AS bn
-- A user's older builds ran on the previous version.
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN w.kind = 'user' AND bn <= w.builds - 2 AND w.v > 1 THEN w.v - 1
        ELSE w.v
    END AS v
) AS ver;

-- name: insert_templates
INSERT INTO templates (
    id, created_at, updated_at, organization_id, name, provisioner, active_version_id,
    created_by
)
SELECT
    t.id, now() - interval '400 days', now(), t.org_id, 'template-' || t.n, 'terraform',
    md5('bench-version-' || t.n || '-' || %(versions)s::int)::uuid,
    md5('bench-user-1')::uuid
FROM bench_tpl AS t;

-- name: insert_import_jobs
INSERT INTO provisioner_jobs (
    id, created_at, updated_at, started_at, completed_at, organization_id, initiator_id,
    provisioner, storage_method, type, input, worker_id, file_id, tags
)
SELECT
    v.job_id, v.created_at, v.created_at, v.created_at, v.created_at + interval '1 minute',
    v.org_id, md5('bench-user-1')::uuid, 'terraform', 'file', 'template_version_import',
    jsonb_build_object('template_version_id', v.id), md5('bench-worker')::uuid, v.file_id,
    '{"scope": "organization", "owner": ""}'
FROM bench_ver AS v;

-- name: insert_versions
INSERT INTO template_versions (
    id, template_id, organization_id, created_at, updated_at, name, readme, job_id, created_by
)
SELECT
    v.id, v.template_id, v.org_id, v.created_at, v.created_at, 'v' || v.v, '', v.job_id,
    md5('bench-user-1')::uuid
FROM bench_ver AS v;

-- name: insert_presets
INSERT INTO template_version_presets (
    id, template_version_id, name, created_at, desired_instances, invalidate_after_secs,
    scheduling_timezone, is_default
)
SELECT
    p.id, p.version_id, 'preset-' || p.p, p.created_at, p.desired, 0,
    CASE WHEN p.scheduled THEN 'Europe/Berlin' ELSE '' END, p.p = 1
FROM bench_pre AS p;

-- name: insert_preset_parameters
INSERT INTO template_version_preset_parameters (template_version_preset_id, name, value)
SELECT p.id, param.name, param.name || '-' || p.p
FROM bench_pre AS p
CROSS JOIN (VALUES ('region'), ('size')) AS param (name);

-- name: insert_schedules
INSERT INTO template_version_preset_prebuild_schedules (
    preset_id, cron_expression, desired_instances
)
SELECT p.id, '* 9-17 * * 1-5', p.desired
FROM bench_pre AS p
WHERE p.scheduled;

-- name: insert_workspaces
INSERT INTO workspaces (
    id, created_at, updated_at, owner_id, organization_id, template_id, deleted, name,
    last_used_at, automatic_updates
)
SELECT
    w.id, w.created_at, w.created_at, w.owner_id, w.org_id, w.template_id, w.deleted,
    CASE WHEN w.kind = 'user' THEN 'ws-' ELSE 'prebuild-' END || left(md5(w.id::text), 16),
    w.created_at, 'never'
FROM bench_ws AS w;

-- name: insert_build_jobs
INSERT INTO provisioner_jobs (
    id, created_at, updated_at, started_at, completed_at, error, organization_id, initiator_id,
    provisioner, storage_method, type, input, worker_id, file_id, tags
)
SELECT
    b.job_id,
    b.created_at,
    b.created_at + interval '2 minutes',
    CASE WHEN b.status <> 'pending' THEN b.created_at + interval '5 seconds' END,
    CASE WHEN b.status IN ('succeeded', 'failed') THEN b.created_at + interval '2 minutes' END,
    CASE WHEN b.status = 'failed' THEN 'terraform apply failed' END,
    b.org_id,
    b.initiator_id,
    'terraform',
    'file',
    'workspace_build',
    CASE
        WHEN b.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid THEN
            jsonb_build_object(
                'workspace_build_id', b.id, 'dry_run', false, 'prebuilt_workspace_stage', 1
            )
        WHEN b.kind = 'claimed' AND b.bn = 2 THEN
            jsonb_build_object(
                'workspace_build_id', b.id, 'dry_run', false, 'prebuilt_workspace_stage', 2
            )
        ELSE jsonb_build_object('workspace_build_id', b.id, 'dry_run', false)
    END,
    CASE WHEN b.status <> 'pending' THEN md5('bench-worker')::uuid END,
    b.file_id,
    '{"scope": "organization", "owner": ""}'
FROM bench_build AS b;

-- name: insert_builds
INSERT INTO workspace_builds (
    id, created_at, updated_at, workspace_id, template_version_id, build_number, transition,
    initiator_id, job_id, reason, template_version_preset_id
)
SELECT
    b.id, b.created_at, b.created_at, b.workspace_id, b.version_id, b.bn, b.transition,
    b.initiator_id, b.job_id, 'initiator', b.preset_id
FROM bench_build AS b;

-- name: insert_build_parameters
INSERT INTO workspace_build_parameters (workspace_build_id, name, value)
SELECT b.id, pp.name, pp.value
FROM bench_build AS b
JOIN template_version_preset_parameters AS pp ON pp.template_version_preset_id = b.preset_id;

-- name: chunk_resources
CREATE TEMP TABLE bench_res ON COMMIT DROP AS
SELECT gen_random_uuid() AS id, b.job_id, b.created_at + interval '2 minutes' AS created_at,
       b.agent_state
FROM bench_build AS b
WHERE b.transition = 'start'
  AND b.status = 'succeeded';

-- name: insert_resources
INSERT INTO workspace_resources (id, created_at, job_id, transition, type, name)
SELECT r.id, r.created_at, r.job_id, 'start', 'docker_container', 'main'
FROM bench_res AS r;

-- name: insert_agents
INSERT INTO workspace_agents (
    id, created_at, updated_at, name, resource_id, auth_token, architecture,
    operating_system, lifecycle_state, first_connected_at, last_connected_at, started_at,
    ready_at
)
SELECT
    gen_random_uuid(), r.created_at, r.created_at, 'main', r.id, gen_random_uuid(), 'amd64',
    'linux', r.agent_state::workspace_agent_lifecycle_state, r.created_at, r.created_at,
    r.created_at, CASE WHEN r.agent_state <> 'starting' THEN r.created_at END
FROM bench_res AS r;

-- name: seeding_without_triggers
-- Superusers only: skips ordinary and foreign-key triggers while seeding (the rows are
-- consistent by construction; `fleet_integrity` checks it), for this transaction only.
SELECT set_config('session_replication_role', 'replica', true);

-- name: seeding_without_jit
-- The seeding statements are big but simple: compiling them costs more than it saves.
SELECT set_config('jit', 'off', true);

-- name: fleet_counts
SELECT 'templates' AS what, count(*) FROM templates
UNION ALL SELECT 'template_versions', count(*) FROM template_versions
UNION ALL SELECT 'presets', count(*) FROM template_version_presets
UNION ALL SELECT 'presets on active versions', count(*)
    FROM template_version_presets AS p
    JOIN templates AS t ON t.active_version_id = p.template_version_id
UNION ALL SELECT 'workspaces', count(*) FROM workspaces
UNION ALL SELECT 'workspaces of the prebuilds user (live)', count(*)
    FROM workspaces
    WHERE owner_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid AND NOT deleted
UNION ALL SELECT 'workspace_builds', count(*) FROM workspace_builds
UNION ALL SELECT 'provisioner_jobs', count(*) FROM provisioner_jobs
UNION ALL SELECT 'workspace_resources', count(*) FROM workspace_resources
UNION ALL SELECT 'workspace_agents', count(*) FROM workspace_agents
UNION ALL SELECT 'workspace_build_parameters', count(*) FROM workspace_build_parameters
UNION ALL SELECT 'users', count(*) FROM users;

-- name: fleet_integrity
-- Rows whose reference is dangling (seeding may skip foreign-key checks): all must be 0.
SELECT 'builds without job' AS what, count(*)
    FROM workspace_builds AS b
    WHERE NOT EXISTS (SELECT 1 FROM provisioner_jobs AS j WHERE j.id = b.job_id)
UNION ALL SELECT 'builds without workspace', count(*)
    FROM workspace_builds AS b
    WHERE NOT EXISTS (SELECT 1 FROM workspaces AS w WHERE w.id = b.workspace_id)
UNION ALL SELECT 'builds without version', count(*)
    FROM workspace_builds AS b
    WHERE NOT EXISTS (SELECT 1 FROM template_versions AS v WHERE v.id = b.template_version_id)
UNION ALL SELECT 'builds with unknown preset', count(*)
    FROM workspace_builds AS b
    WHERE b.template_version_preset_id IS NOT NULL
      AND NOT EXISTS (
          SELECT 1 FROM template_version_presets AS p WHERE p.id = b.template_version_preset_id
      )
UNION ALL SELECT 'workspaces without owner', count(*)
    FROM workspaces AS w
    WHERE NOT EXISTS (SELECT 1 FROM users AS u WHERE u.id = w.owner_id)
UNION ALL SELECT 'templates without active version', count(*)
    FROM templates AS t
    WHERE NOT EXISTS (SELECT 1 FROM template_versions AS v WHERE v.id = t.active_version_id)
UNION ALL SELECT 'versions without import job', count(*)
    FROM template_versions AS v
    WHERE NOT EXISTS (SELECT 1 FROM provisioner_jobs AS j WHERE j.id = v.job_id)
UNION ALL SELECT 'resources without job', count(*)
    FROM workspace_resources AS r
    WHERE NOT EXISTS (SELECT 1 FROM provisioner_jobs AS j WHERE j.id = r.job_id)
UNION ALL SELECT 'agents without resource', count(*)
    FROM workspace_agents AS a
    WHERE NOT EXISTS (SELECT 1 FROM workspace_resources AS r WHERE r.id = a.resource_id)
UNION ALL SELECT 'live workspaces with duplicate owner/name', count(*) - count(DISTINCT (owner_id, lower(name)))
    FROM workspaces
    WHERE NOT deleted;

-- name: vacuum_analyze
-- After seeding, what autovacuum would long have done on a live database.
VACUUM (ANALYZE);
