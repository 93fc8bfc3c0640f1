-- REFERENCE ONLY -- NOT USED BY THE SERVICE. The write statements prebuildd ran before its
-- writes moved into SECURITY DEFINER functions (sql/functions/prebuild_writes.sql), kept
-- verbatim (sql/queries/actions.sql as of commit a921040) so that bench/privilege.py can
-- measure the functions against them side by side, as the owner of Coder's tables. Do not
-- "fix" them: they are the baseline. They need direct write privileges the service role no
-- longer has.

-- name: baseline_create_prebuilds
-- %(count)s new prebuilds of one preset: workspace, pending job, build 1 (`start`) and the
-- preset's parameters for each. Only for the active version of a live, non-deprecated
-- template: anything else inserts nothing (a promotion that raced the plan).
WITH source AS MATERIALIZED (
    SELECT
        p.id AS preset_id,
        v.id AS template_version_id,
        t.id AS template_id,
        t.organization_id,
        t.provisioner,
        ij.storage_method,
        ij.file_id,
        ij.tags AS import_tags,
        ij.id IS NOT NULL AS has_import_job
    FROM template_version_presets AS p
    JOIN template_versions AS v ON v.id = p.template_version_id
    JOIN templates AS t ON t.id = v.template_id
    LEFT JOIN provisioner_jobs AS ij ON ij.id = v.job_id
    WHERE p.id = %(preset_id)s::uuid
      AND v.id = %(template_version_id)s::uuid
      AND t.active_version_id = v.id
      AND NOT t.deleted
      AND t.deprecated = ''
),
tagged AS MATERIALIZED (
    SELECT
        s.*,
        CASE WHEN s.has_import_job THEN
            kept.tags || jsonb_build_object(
                'scope', scope.value,
                'owner', CASE scope.value
                             WHEN 'user' THEN 'c42fdf75-3097-471c-8c33-fb52454d81c0'
                             ELSE ''
                         END
            )
        END AS tags
    FROM source AS s
    CROSS JOIN LATERAL (
        SELECT COALESCE(jsonb_object_agg(e.key, e.value), '{}'::jsonb) AS tags
        FROM jsonb_each_text(COALESCE(s.import_tags, '{}'::jsonb)) AS e
        WHERE e.value <> ''
    ) AS kept
    CROSS JOIN LATERAL (
        SELECT CASE
                   WHEN kept.tags ->> 'scope' IN ('user', 'organization') THEN kept.tags ->> 'scope'
                   ELSE 'organization'
               END AS value
    ) AS scope
),
spawn AS MATERIALIZED (
    SELECT
        s.*,
        gen_random_uuid() AS workspace_id,
        gen_random_uuid() AS build_id,
        gen_random_uuid() AS job_id,
        -- 64 random bits: unique per owner in practice; Coder's names are as short.
        'prebuild-' || left(md5(gen_random_uuid()::text), 16) AS name
    FROM tagged AS s
    CROSS JOIN generate_series(1, %(count)s::int) AS n
),
new_workspaces AS (
    INSERT INTO workspaces (
        id, created_at, updated_at, owner_id, organization_id, template_id, deleted, name,
        autostart_schedule, ttl, last_used_at, automatic_updates, favorite, next_start_at
    )
    SELECT
        sp.workspace_id, %(now)s, %(now)s, 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid,
        sp.organization_id, sp.template_id, false, sp.name,
        NULL, NULL, %(now)s, 'never', false, NULL
    FROM spawn AS sp
    RETURNING id
),
new_jobs AS (
    INSERT INTO provisioner_jobs (
        id, created_at, updated_at, organization_id, initiator_id, provisioner,
        storage_method, type, input, file_id, tags, trace_metadata
    )
    SELECT
        sp.job_id, %(now)s, %(now)s, sp.organization_id,
        'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid, sp.provisioner,
        sp.storage_method, 'workspace_build',
        jsonb_build_object(
            'workspace_build_id', sp.build_id,
            'dry_run', false,
            'prebuilt_workspace_stage', 1
        ),
        sp.file_id, sp.tags, %(trace_metadata)s::jsonb
    FROM spawn AS sp
    RETURNING id
),
new_builds AS (
    INSERT INTO workspace_builds (
        id, created_at, updated_at, workspace_id, template_version_id, build_number,
        transition, initiator_id, provisioner_state, job_id, deadline, max_deadline, reason,
        template_version_preset_id
    )
    SELECT
        sp.build_id, %(now)s, %(now)s, sp.workspace_id, sp.template_version_id, 1,
        'start', 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid, NULL, sp.job_id,
        '0001-01-01 00:00:00+00', '0001-01-01 00:00:00+00', 'initiator', sp.preset_id
    FROM spawn AS sp
    RETURNING id
),
new_parameters AS (
    INSERT INTO workspace_build_parameters (workspace_build_id, name, value)
    SELECT sp.build_id, pp.name, pp.value
    FROM spawn AS sp
    JOIN template_version_preset_parameters AS pp
        ON pp.template_version_preset_id = sp.preset_id
    RETURNING workspace_build_id
),
posted AS (
    SELECT pg_notify(
        'provisioner_job_posted',
        jsonb_build_object(
            'organization_id', d.organization_id, 'type', d.provisioner, 'tags', d.tags
        )::text
    )
    FROM (SELECT DISTINCT organization_id, provisioner, tags FROM spawn) AS d
)
-- Referencing `posted` is what makes it run (a plain SELECT in WITH runs only on demand).
SELECT sp.workspace_id, (SELECT count(*) FROM posted) AS postings
FROM spawn AS sp;

-- name: baseline_delete_prebuilds
-- Queue a `delete` build for each given workspace that is, at this instant and under a row
-- lock, still an unclaimed prebuild whose latest build is a succeeded `start`. The lock is
-- what makes a racing claim safe: a claim locks the same workspace row (FOR UPDATE SKIP
-- LOCKED), so either it sees our lock and picks another prebuild, or it committed first and
-- the re-check of owner_id after the lock wait drops the workspace here (READ COMMITTED).
-- The delete build repeats the latest build's version, preset, provisioner state and
-- parameters, as Coder's builder does for a delete without an explicit version.
WITH candidates AS MATERIALIZED (
    SELECT w.id AS workspace_id, t.organization_id, t.provisioner
    FROM workspaces AS w
    JOIN templates AS t ON t.id = w.template_id
    WHERE w.id = ANY(%(workspace_ids)s::uuid[])
      AND w.owner_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
      AND NOT w.deleted
    FOR UPDATE OF w
),
latest AS MATERIALIZED (
    SELECT
        c.workspace_id, c.organization_id, c.provisioner,
        lb.id AS previous_build_id, lb.build_number, lb.template_version_id,
        lb.template_version_preset_id, lb.provisioner_state
    FROM candidates AS c
    CROSS JOIN LATERAL (
        SELECT
            b.id, b.build_number, b.transition, b.template_version_id,
            b.template_version_preset_id, b.provisioner_state, b.job_id
        FROM workspace_builds AS b
        WHERE b.workspace_id = c.workspace_id
        ORDER BY b.build_number DESC
        LIMIT 1
    ) AS lb
    JOIN provisioner_jobs AS j ON j.id = lb.job_id
    WHERE lb.transition = 'start'
      AND j.job_status = 'succeeded'
),
spawn AS MATERIALIZED (
    SELECT
        l.*,
        ij.storage_method,
        ij.file_id,
        CASE WHEN ij.id IS NOT NULL THEN
            kept.tags || jsonb_build_object(
                'scope', scope.value,
                'owner', CASE scope.value
                             WHEN 'user' THEN 'c42fdf75-3097-471c-8c33-fb52454d81c0'
                             ELSE ''
                         END
            )
        END AS tags,
        gen_random_uuid() AS build_id,
        gen_random_uuid() AS job_id
    FROM latest AS l
    JOIN template_versions AS v ON v.id = l.template_version_id
    LEFT JOIN provisioner_jobs AS ij ON ij.id = v.job_id
    CROSS JOIN LATERAL (
        SELECT COALESCE(jsonb_object_agg(e.key, e.value), '{}'::jsonb) AS tags
        FROM jsonb_each_text(COALESCE(ij.tags, '{}'::jsonb)) AS e
        WHERE e.value <> ''
    ) AS kept
    CROSS JOIN LATERAL (
        SELECT CASE
                   WHEN kept.tags ->> 'scope' IN ('user', 'organization') THEN kept.tags ->> 'scope'
                   ELSE 'organization'
               END AS value
    ) AS scope
),
new_jobs AS (
    INSERT INTO provisioner_jobs (
        id, created_at, updated_at, organization_id, initiator_id, provisioner,
        storage_method, type, input, file_id, tags, trace_metadata
    )
    SELECT
        sp.job_id, %(now)s, %(now)s, sp.organization_id,
        'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid, sp.provisioner,
        sp.storage_method, 'workspace_build',
        jsonb_build_object(
            'workspace_build_id', sp.build_id,
            'dry_run', false,
            'prebuilt_workspace_stage', 1
        ),
        sp.file_id, sp.tags, %(trace_metadata)s::jsonb
    FROM spawn AS sp
    RETURNING id
),
new_builds AS (
    INSERT INTO workspace_builds (
        id, created_at, updated_at, workspace_id, template_version_id, build_number,
        transition, initiator_id, provisioner_state, job_id, deadline, max_deadline, reason,
        template_version_preset_id
    )
    SELECT
        sp.build_id, %(now)s, %(now)s, sp.workspace_id, sp.template_version_id,
        sp.build_number + 1, 'delete', 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid,
        sp.provisioner_state, sp.job_id, '0001-01-01 00:00:00+00', '0001-01-01 00:00:00+00',
        'initiator', sp.template_version_preset_id
    FROM spawn AS sp
    RETURNING id
),
new_parameters AS (
    INSERT INTO workspace_build_parameters (workspace_build_id, name, value)
    SELECT sp.build_id, bp.name, bp.value
    FROM spawn AS sp
    JOIN workspace_build_parameters AS bp ON bp.workspace_build_id = sp.previous_build_id
    RETURNING workspace_build_id
),
posted AS (
    SELECT pg_notify(
        'provisioner_job_posted',
        jsonb_build_object(
            'organization_id', d.organization_id, 'type', d.provisioner, 'tags', d.tags
        )::text
    )
    FROM (SELECT DISTINCT organization_id, provisioner, tags FROM spawn) AS d
)
SELECT sp.workspace_id, (SELECT count(*) FROM posted) AS postings
FROM spawn AS sp;

-- name: baseline_cancel_pending_prebuilds
-- For one preset: cancel the queued first `start` jobs of prebuilds on a non-active version
-- and retire those never-built workspaces in the same statement. Strict scope: the preset's
-- prebuilds (owned by, and first build started by, the prebuilds user), build 1 with no later
-- build, transition `start`, a version that is not the template's active one (or a deleted
-- or deprecated template), a job nobody
-- picked up (pending, worker_id NULL, neither canceled nor completed).
--
-- Rows are locked with SKIP LOCKED: a provisioner acquiring a job locks it first, and a job
-- it holds is about to run, so it is not ours to cancel. After waiting on nothing, the
-- conditions above are those of the locked rows.
--
-- Each canceled workspace gets build 2, a `delete` whose job is already completed
-- (succeeded, started = completed = now): nothing was provisioned, so no provisioner has
-- anything to destroy -- Coder completes an orphan delete the same way when no provisioner
-- is available. The workspace is then marked deleted.
WITH doomed AS MATERIALIZED (
    SELECT
        w.id AS workspace_id,
        b.id AS build_id,
        b.template_version_id,
        b.template_version_preset_id,
        j.id AS job_id,
        j.organization_id,
        j.provisioner,
        j.storage_method,
        j.file_id,
        j.tags
    FROM workspace_builds AS b
    JOIN workspaces AS w ON w.id = b.workspace_id
    JOIN templates AS t ON t.id = w.template_id
    JOIN provisioner_jobs AS j ON j.id = b.job_id
    WHERE b.template_version_preset_id = %(preset_id)s::uuid
      AND b.build_number = 1
      AND b.transition = 'start'
      AND b.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
      -- Only prebuilds nobody wants any more: a superseded version, or a template that was
      -- deleted or deprecated (its active version gets no prebuilds either).
      AND (b.template_version_id <> t.active_version_id OR t.deleted OR t.deprecated <> '')
      AND w.owner_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
      AND NOT w.deleted
      AND j.job_status = 'pending'
      AND j.worker_id IS NULL
      AND j.canceled_at IS NULL
      AND j.completed_at IS NULL
      AND NOT EXISTS (
          SELECT 1
          FROM workspace_builds AS later
          WHERE later.workspace_id = b.workspace_id
            AND later.build_number > 1
      )
    FOR UPDATE OF w, j SKIP LOCKED
),
canceled AS (
    UPDATE provisioner_jobs AS j
    SET canceled_at = %(now)s, completed_at = %(now)s, updated_at = %(now)s
    FROM doomed AS d
    WHERE j.id = d.job_id
    RETURNING j.id
),
spawn AS MATERIALIZED (
    SELECT d.*, gen_random_uuid() AS delete_build_id, gen_random_uuid() AS delete_job_id
    FROM doomed AS d
),
delete_jobs AS (
    INSERT INTO provisioner_jobs (
        id, created_at, updated_at, started_at, completed_at, organization_id, initiator_id,
        provisioner, storage_method, type, input, file_id, tags
    )
    SELECT
        sp.delete_job_id, %(now)s, %(now)s, %(now)s, %(now)s, sp.organization_id,
        'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid, sp.provisioner, sp.storage_method,
        'workspace_build',
        jsonb_build_object(
            'workspace_build_id', sp.delete_build_id,
            'dry_run', false,
            'prebuilt_workspace_stage', 1
        ),
        sp.file_id, sp.tags
    FROM spawn AS sp
    RETURNING id
),
delete_builds AS (
    INSERT INTO workspace_builds (
        id, created_at, updated_at, workspace_id, template_version_id, build_number,
        transition, initiator_id, provisioner_state, job_id, deadline, max_deadline, reason,
        template_version_preset_id
    )
    SELECT
        sp.delete_build_id, %(now)s, %(now)s, sp.workspace_id, sp.template_version_id, 2,
        'delete', 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid, NULL, sp.delete_job_id,
        '0001-01-01 00:00:00+00', '0001-01-01 00:00:00+00', 'initiator',
        sp.template_version_preset_id
    FROM spawn AS sp
    RETURNING id
),
delete_parameters AS (
    INSERT INTO workspace_build_parameters (workspace_build_id, name, value)
    SELECT sp.delete_build_id, bp.name, bp.value
    FROM spawn AS sp
    JOIN workspace_build_parameters AS bp ON bp.workspace_build_id = sp.build_id
    RETURNING workspace_build_id
),
retired AS (
    UPDATE workspaces AS w
    SET deleted = true
    FROM spawn AS sp
    WHERE w.id = sp.workspace_id
    RETURNING w.id
)
SELECT r.id AS workspace_id
FROM retired AS r;
