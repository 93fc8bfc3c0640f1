-- A Coder-shaped fleet for the benchmarks (bench/fleet.py), written set-based: per chunk of
-- templates, temporary tables say which rows the fleet holds (generate_series, never a row at
-- a time), and the builder of Coder rows (sql/seed/coder_rows.sql, the one tests and the demo
-- use) writes them, one call per table with arrays of the whole chunk.
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
-- The prebuilds user is prebuildd.prebuilds_user_id() (the fleet's database is migrated; the
-- function is inlined as the literal).
--
-- Statements without a `%(...)s` placeholder after the temp tables read only from them.

-- name: fleet_organizations
SELECT pg_temp.seed_organizations(
    id => array_agg(md5('bench-org-' || o)::uuid),
    name => array_agg('bench-org-' || o),
    display_name => array_agg('Bench org ' || o),
    is_default => array_agg(o = 1)
)
FROM generate_series(1, %(organizations)s::int) AS o;

-- name: fleet_users
SELECT pg_temp.seed_users(
    id => array_agg(md5('bench-user-' || u)::uuid),
    username => array_agg('user' || u),
    email => array_agg('user' || u || '@bench.invalid'),
    name => array_agg('User ' || u),
    created_at => array_agg(now() - interval '500 days')
)
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
        ELSE prebuildd.prebuilds_user_id()
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
    CASE
        WHEN w.kind = 'history' AND bn = 2 THEN 'delete'
        WHEN w.kind = 'claimed' AND bn > 2 AND mod(bn, 2) = 1 THEN 'stop'
        WHEN w.kind = 'user' AND mod(bn, 2) = 0 THEN 'stop'
        ELSE 'start'
    END AS transition,
    CASE
        WHEN w.kind = 'user' OR (w.kind = 'claimed' AND bn > 1) THEN w.owner_id
        ELSE prebuildd.prebuilds_user_id()
    END AS initiator_id,
    bv.id AS version_id,
    -- The version's import job's file: what Coder's builder copies onto the build's job.
    bv.file_id,
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
) AS ver
JOIN bench_ver AS bv ON bv.n = w.n AND bv.v = ver.v;

-- name: insert_templates
SELECT pg_temp.seed_templates(
    id => array_agg(t.id),
    organization_id => array_agg(t.org_id),
    created_by => array_agg(md5('bench-user-1')::uuid),
    active_version_id => array_agg(
        md5('bench-version-' || t.n || '-' || %(versions)s::int)::uuid
    ),
    name => array_agg('template-' || t.n),
    created_at => array_agg(now() - interval '400 days')
)
FROM bench_tpl AS t;

-- name: insert_versions
-- With their import jobs.
SELECT pg_temp.seed_versions(
    id => array_agg(v.id),
    template_id => array_agg(v.template_id),
    created_by => array_agg(md5('bench-user-1')::uuid),
    name => array_agg('v' || v.v),
    created_at => array_agg(v.created_at),
    job_id => array_agg(v.job_id),
    file_id => array_agg(v.file_id),
    organization_id => array_agg(v.org_id)
)
FROM bench_ver AS v;

-- name: insert_presets
SELECT pg_temp.seed_presets(
    id => array_agg(p.id),
    template_version_id => array_agg(p.version_id),
    desired_instances => array_agg(p.desired),
    name => array_agg('preset-' || p.p),
    invalidate_after_secs => array_agg(0),
    scheduling_timezone => array_agg(CASE WHEN p.scheduled THEN 'Europe/Berlin' ELSE '' END),
    is_default => array_agg(p.p = 1),
    created_at => array_agg(p.created_at)
)
FROM bench_pre AS p;

-- name: insert_preset_parameters
SELECT pg_temp.seed_preset_parameters(
    preset_id => array_agg(p.id),
    name => array_agg(param.name),
    value => array_agg(param.name || '-' || p.p)
)
FROM bench_pre AS p
CROSS JOIN (VALUES ('region'), ('size')) AS param (name);

-- name: insert_schedules
SELECT pg_temp.seed_schedules(
    preset_id => array_agg(p.id),
    cron_expression => array_agg('* 9-17 * * 1-5'::text),
    desired_instances => array_agg(p.desired)
)
FROM bench_pre AS p
WHERE p.scheduled;

-- name: insert_workspaces
SELECT pg_temp.seed_workspaces(
    id => array_agg(w.id),
    template_id => array_agg(w.template_id),
    owner_id => array_agg(w.owner_id),
    name => array_agg(
        CASE WHEN w.kind = 'user' THEN 'ws-' ELSE 'prebuild-' END || left(md5(w.id::text), 16)
    ),
    created_at => array_agg(w.created_at),
    deleted => array_agg(w.deleted),
    organization_id => array_agg(w.org_id)
)
FROM bench_ws AS w;

-- name: insert_builds
-- With their jobs (input as Coder's builder writes it for prebuilds: marked by their stage;
-- users' builds keep the builder's input, their build id alone) and their presets'
-- parameters.
SELECT pg_temp.seed_builds(
    id => array_agg(b.id),
    workspace_id => array_agg(b.workspace_id),
    template_version_id => array_agg(b.version_id),
    build_number => array_agg(b.bn),
    transition => array_agg(b.transition),
    initiator_id => array_agg(b.initiator_id),
    preset_id => array_agg(b.preset_id),
    job_status => array_agg(b.status),
    created_at => array_agg(b.created_at),
    job_id => array_agg(b.job_id),
    job_input => array_agg(
        CASE
            WHEN b.initiator_id = prebuildd.prebuilds_user_id()
                THEN '{"dry_run": false, "prebuilt_workspace_stage": 1}'::jsonb
            WHEN b.kind = 'claimed' AND b.bn = 2
                THEN '{"dry_run": false, "prebuilt_workspace_stage": 2}'::jsonb
        END
    ),
    -- One worker ran every job (a new id per job would cost a random number each, and
    -- scatter the index on worker_id).
    worker_id => array_agg(CASE WHEN b.status <> 'pending' THEN md5('bench-worker')::uuid END),
    organization_id => array_agg(b.org_id),
    provisioner => array_agg('terraform'::text),
    file_id => array_agg(b.file_id)
)
FROM bench_build AS b;

-- name: insert_agents
-- One agent (on a resource of its own) per succeeded start.
SELECT pg_temp.seed_agents(
    id => array_agg(gen_random_uuid()),
    job_id => array_agg(b.job_id),
    resource_id => array_agg(gen_random_uuid()),
    lifecycle_state => array_agg(b.agent_state),
    name => array_agg('main'::text),
    created_at => array_agg(b.created_at + interval '2 minutes')
)
FROM bench_build AS b
WHERE b.transition = 'start'
  AND b.status = 'succeeded';

-- name: seeding_without_triggers
-- Superusers only: skips ordinary and foreign-key triggers while seeding (the rows are
-- consistent by construction; `fleet_integrity` checks it), for this transaction only.
SELECT set_config('session_replication_role', 'replica', true);

-- name: seeding_in_memory
-- Room in memory for a chunk's temporary tables (its builds alone are tens of MB) and sorts,
-- which would otherwise spill to temporary files. For the session; temp_buffers only takes
-- before its first temporary table.
SELECT set_config('temp_buffers', '256MB', false), set_config('work_mem', '64MB', false);

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
    WHERE owner_id = prebuildd.prebuilds_user_id() AND NOT deleted
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
