-- name: claim_prebuild
-- Hands one eligible prebuild of a preset to a user and queues the user's `start` build, in
-- the caller's transaction, in one statement.
--
-- The prebuilds user is prebuildd.prebuilds_user_id(), which the planner inlines as the
-- literal (the owner runs this; the least-privilege role may not call it).
--
-- Eligible: owned by the prebuilds user, not deleted, template not deleted, latest build a
-- succeeded `start` of this preset on the template's active version, and every top-level,
-- non-deleted agent of that build `ready` (a build without agents is not ready, as in Coder).
--
-- The search starts from the preset and walks to its template's workspaces, so the cost
-- follows one template's fleet, not the prebuilds user's whole fleet. The chosen workspace row
-- is locked FOR UPDATE SKIP LOCKED: concurrent claims never block on, or share, a candidate;
-- a row claimed by a transaction that committed meanwhile fails the owner re-check and the
-- next candidate is taken. Oldest first, so younger prebuilds (further from expiry) stay.
--
-- Its instant is %(now)s when the caller gives one, else the database's now() (the caller's
-- transaction start), never the host's clock: Coder's own timestamps come from the database.
--
-- Always returns exactly one row: flags for the two refusals (unknown user, name taken) and
-- the claimed ids, NULL when nothing was claimed. A refusal writes nothing and leaves the
-- caller's transaction usable. The name check reads committed data; a concurrent insert of
-- the same name still fails on Coder's unique index (workspaces_owner_id_lower_idx).
-- Likewise, a build queued for the chosen workspace after this statement's snapshot (a
-- delete that locked and committed in between) makes build_number + 1 collide on
-- workspace_builds_workspace_id_build_number_key: the claim fails rather than overwrite it.
WITH
checks AS (
    SELECT
        EXISTS (
            SELECT 1 FROM users u WHERE u.id = %(user_id)s AND NOT u.deleted
        ) AS user_ok,
        EXISTS (
            SELECT 1
            FROM workspaces taken
            WHERE taken.owner_id = %(user_id)s
              AND lower(taken.name) = lower(%(name)s)
              AND NOT taken.deleted
        ) AS name_taken
),
candidate AS (
    SELECT
        w.id AS workspace_id,
        t.default_ttl,
        lb.id AS previous_build_id,
        lb.job_id AS previous_job_id,
        lb.build_number,
        lb.template_version_id,
        lb.provisioner_state,
        tv.job_id AS import_job_id
    FROM template_version_presets p
    JOIN template_versions tv ON tv.id = p.template_version_id
    JOIN templates t
      ON t.id = tv.template_id
     AND t.active_version_id = tv.id
     AND NOT t.deleted
    JOIN workspaces w
      ON w.template_id = t.id
     AND w.owner_id = prebuildd.prebuilds_user_id()
     AND NOT w.deleted
    CROSS JOIN LATERAL (
        SELECT b.id, b.build_number, b.transition, b.job_id, b.template_version_id,
               b.template_version_preset_id, b.provisioner_state
        FROM workspace_builds b
        WHERE b.workspace_id = w.id
        ORDER BY b.build_number DESC
        LIMIT 1
    ) lb
    JOIN provisioner_jobs j ON j.id = lb.job_id
    WHERE p.id = %(preset_id)s
      AND lb.transition = 'start'
      AND lb.template_version_id = tv.id
      AND lb.template_version_preset_id = p.id
      AND j.job_status = 'succeeded'
      AND (
          SELECT bool_and(a.lifecycle_state = 'ready')
          FROM workspace_resources r
          JOIN workspace_agents a ON a.resource_id = r.id
          WHERE r.job_id = lb.job_id
            AND a.parent_id IS NULL
            AND NOT a.deleted
      ) IS TRUE
      AND (SELECT c.user_ok AND NOT c.name_taken FROM checks c)
    ORDER BY w.created_at, w.id
    LIMIT 1
    FOR UPDATE OF w SKIP LOCKED
),
claimed AS (
    UPDATE workspaces w
    SET owner_id = %(user_id)s,
        name = %(name)s,
        updated_at = COALESCE(%(now)s::timestamptz, now()),
        -- A claimed workspace is an ordinary user workspace from now on: the lifecycle
        -- executor manages it with the template's defaults. No autostart was requested.
        autostart_schedule = NULL,
        next_start_at = NULL,
        ttl = NULLIF(c.default_ttl, 0),
        -- Fresh usage, so the stale prebuild age never counts toward dormancy.
        last_used_at = COALESCE(%(now)s::timestamptz, now()),
        dormant_at = NULL,
        deleting_at = NULL
    FROM candidate c
    WHERE w.id = c.workspace_id
    RETURNING w.id, w.name, w.organization_id
),
import_job AS (
    -- The build runs where the version was imported, with the tags Coder's builder gives it,
    -- computed by the function the creates use (prebuildd.job_tags), so that claims and
    -- creates agree: the import job's tags without empty values, the version's workspace tags,
    -- and the owner rule of Coder's provisionersdk.MutateTags for the new owner (a user-scoped
    -- job is owned by the claiming user; anything else is organization-scoped with an empty
    -- owner). The workspace tags are those the prebuild was built with (its latest build's
    -- job, keys the version declares): the claim keeps the preset's parameters, with which
    -- Coder's builder evaluates the same expressions to the same values.
    SELECT
        ij.organization_id, ij.provisioner, ij.storage_method, ij.file_id,
        prebuildd.job_tags(
            ij.tags,
            (
                SELECT jsonb_object_agg(e.key, e.value)
                FROM provisioner_jobs pj
                CROSS JOIN LATERAL jsonb_each(pj.tags) e
                WHERE pj.id = c.previous_job_id
                  AND e.key IN (
                      SELECT wt.key
                      FROM template_version_workspace_tags wt
                      WHERE wt.template_version_id = c.template_version_id
                  )
            ),
            %(user_id)s::uuid
        ) AS tags
    FROM candidate c
    JOIN provisioner_jobs ij ON ij.id = c.import_job_id
),
new_job AS (
    INSERT INTO provisioner_jobs (
        id, created_at, updated_at, organization_id, initiator_id, provisioner,
        storage_method, type, input, file_id, tags
    )
    SELECT
        %(job_id)s,
        COALESCE(%(now)s::timestamptz, now()),
        COALESCE(%(now)s::timestamptz, now()),
        ij.organization_id, %(user_id)s, ij.provisioner,
        ij.storage_method, 'workspace_build'::provisioner_job_type,
        jsonb_build_object(
            'workspace_build_id', %(build_id)s::uuid,
            'dry_run', false,
            -- 2 = CLAIM in Coder's PrebuiltWorkspaceBuildStage.
            'prebuilt_workspace_stage', 2
        ),
        ij.file_id, ij.tags
    FROM import_job ij
    -- Only when the workspace really changed hands in this statement.
    WHERE EXISTS (SELECT 1 FROM claimed)
    RETURNING id, organization_id, provisioner, tags
),
new_build AS (
    INSERT INTO workspace_builds (
        id, created_at, updated_at, workspace_id, template_version_id, build_number,
        transition, initiator_id, provisioner_state, job_id, reason,
        template_version_preset_id
    )
    SELECT
        %(build_id)s,
        COALESCE(%(now)s::timestamptz, now()),
        COALESCE(%(now)s::timestamptz, now()),
        c.workspace_id, c.template_version_id,
        c.build_number + 1, 'start'::workspace_transition, %(user_id)s, c.provisioner_state,
        nj.id, 'initiator'::build_reason,
        %(preset_id)s
    FROM candidate c
    CROSS JOIN new_job nj
    RETURNING id, build_number
),
new_parameters AS (
    INSERT INTO workspace_build_parameters (workspace_build_id, name, value)
    SELECT nb.id, prev.name, prev.value
    FROM new_build nb
    CROSS JOIN candidate c
    JOIN workspace_build_parameters prev ON prev.workspace_build_id = c.previous_build_id
    RETURNING name
),
posted AS (
    -- Wakes Coder's provisioners as Coder does when it queues a job; PostgreSQL delivers it
    -- only when the caller commits.
    SELECT pg_notify(
        'provisioner_job_posted',
        jsonb_build_object(
            'organization_id', nj.organization_id,
            'type', nj.provisioner,
            'tags', nj.tags
        )::text
    ) AS sent
    FROM new_job nj
)
SELECT
    ch.user_ok,
    ch.name_taken,
    cl.id AS workspace_id,
    cl.name,
    nb.id AS build_id,
    nb.build_number,
    nj.id AS job_id,
    (SELECT count(*) FROM new_parameters) AS parameters_copied,
    (SELECT count(*) FROM posted) AS notifications
FROM checks ch
LEFT JOIN claimed cl ON true
LEFT JOIN new_build nb ON true
LEFT JOIN new_job nj ON true;
