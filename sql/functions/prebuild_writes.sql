-- Every write the service makes, as SECURITY DEFINER functions of schema `prebuildd`.
--
-- Why functions. Column grants cannot filter rows: a role that may INSERT into
-- workspace_builds or UPDATE provisioner_jobs may do so for anyone's workspace or job, and a
-- role that copies provisioner_state (Terraform state: agent tokens, often cloud credentials)
-- into a delete build can read everyone's. So the service role gets no write privilege on
-- Coder's tables at all, and no SELECT on provisioner_state; it calls these functions, which run
-- with the privileges of their owner -- whoever ran `prebuildd migrate`, i.e. the owner of
-- Coder's tables -- and which touch only prebuilds' rows:
--   * workspaces owned by the prebuilds user, and jobs that user initiated;
--   * creates only for a preset that wants prebuilds, on the active version of a live,
--     non-deprecated template;
--   * a preset's status only to a value of prebuild_status, an invalidation only through
--     last_invalidated_at, the hard-limit notification only for a preset that is hard_limited
--     (recipients and payload chosen here, methods among Coder's, the time from the server's
--     clock: a caller cannot spam admins, Coder's dedupe hash keeps it to one message per
--     admin, method and day);
--   * provisioner_state is copied from build to build here, never returned.
-- deploy/sql/prebuildd-role.sql grants EXECUTE on the entry points below to the service role;
-- every function is revoked from PUBLIC, and the internal helpers are granted to no one.
--
-- Rules every function here follows:
--   * search_path pinned to Coder's schema and then pg_temp, explicitly LAST: a search_path
--     without pg_temp searches it FIRST for tables, so a caller's temporary table named
--     `workspaces` would shadow Coder's inside a security-definer function. The DO block
--     below sets that path for this file's transaction; `SET search_path FROM CURRENT`
--     captures it in each function (tests/integration/test_least_privilege.py checks both).
--   * No catalog dependency on Coder's objects, so that Coder's own migrations (which alter
--     column types, recreate enum types, rename columns) never fail because of prebuildd:
--     PL/pgSQL or string-bodied SQL (never BEGIN ATOMIC), whose bodies are parsed when
--     called; arguments and results only of built-in types (uuid, text, int, timestamptz,
--     jsonb); enum values cross the boundary as text and are cast inside.
--   * Set-based: one call per action, whatever the number of rows, as the statements they
--     replace. Each call runs in the caller's transaction; the reconciler's savepoint per
--     preset still rolls a failed action back alone.
--   * Generic plans (plan_cache_mode = force_generic_plan): PL/pgSQL caches each statement's
--     plan per session, but left to itself PostgreSQL re-plans these statements on every call
--     (their custom plans always look cheaper), and planning costs more than running them.
--     The statements are written so that their generic plans are the index lookups a
--     custom plan would pick (tests/integration/test_actions.py checks the rows written,
--     bench/privilege.py the cost against the statements these functions replaced).
--
-- Errors the entry points raise on purpose, before writing anything:
--   * SQLSTATE 23V01 (prebuildd's own code; class 23, integrity): the preset can never be
--     built from this version -- create_prebuilds found no usable import job (missing,
--     failed or canceled). The ONLY error on which the service stores `validation_failed`
--     (store.INVALID_PRESET); every other error of a write is retried by the next reconcile.
--   * 22023 invalid_parameter_value: the caller's arguments break a rule (workspace tags not
--     an object of strings, or not exactly the version's declared tag keys): a caller bug,
--     not a property of the preset.
--   * 55000 object_not_in_prerequisite_state: the version's import has not finished yet.
--
-- Repeatable file: `prebuildd migrate` applies it in one transaction whenever its checksum
-- changes (CREATE OR REPLACE keeps the role's grants). Changing a function's arguments needs
-- a DROP FUNCTION of the old signature here, or the old one stays callable; the role script
-- must then be re-applied to grant the new one.

CREATE SCHEMA IF NOT EXISTS prebuildd;

-- The search_path is pinned by `prebuildd migrate` before this file runs
-- (sql/queries/migrate.sql, pin_function_search_path).

-- ---------------------------------------------------------------------------------------------
-- Internal helpers (no grant to anyone but the owner)
-- ---------------------------------------------------------------------------------------------

-- The prebuilds user of Coder (a system user every deployment has, same id everywhere).
-- IMMUTABLE and a plain SELECT of a constant, so the planner inlines it into the statements
-- below as the literal: no call per row. No SET clause (that would prevent inlining); it reads
-- no table, so no search_path can change what it returns. The trigger function
-- (sql/triggers/) spells the id itself: it must call nothing.
CREATE OR REPLACE FUNCTION prebuildd.prebuilds_user_id()
RETURNS uuid
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
AS $fn$
    SELECT 'c42fdf75-3097-471c-8c33-fb52454d81c0'::pg_catalog.uuid
$fn$;

-- The tags of a build job, as Coder's builder computes them: the import job's tags with empty
-- values dropped, then the version's workspace tags as evaluated for the build (these win,
-- empty values included), then the `scope` / `owner` rule of Coder's provisionersdk.MutateTags:
-- `scope` kept when it is "user" or "organization", else "organization"; `owner` the build's
-- owner for user-scoped jobs, "" otherwise. Unlike Coder, `owner` is always derived here, even
-- when a workspace tag names it: nobody can route a job to someone's user-scoped
-- provisioner by naming its owner. Used by queue_builds (owner: the prebuilds user) and by
-- the claim (sql/queries/claim.sql, owner: the claiming user), so that the two agree.
CREATE OR REPLACE FUNCTION prebuildd.job_tags(
    import_tags jsonb,
    workspace_tags jsonb,
    owner_id uuid
)
RETURNS jsonb
LANGUAGE plpgsql
IMMUTABLE
PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    merged jsonb;
    scope text;
BEGIN
    SELECT COALESCE(jsonb_object_agg(e.key, e.value), '{}'::jsonb)
    INTO merged
    FROM jsonb_each_text(COALESCE(job_tags.import_tags, '{}'::jsonb)) AS e
    WHERE e.value <> '';
    merged := merged || COALESCE(job_tags.workspace_tags, '{}'::jsonb);
    scope := merged ->> 'scope';
    IF scope IS NULL OR scope NOT IN ('user', 'organization') THEN
        scope := 'organization';
    END IF;
    RETURN merged || jsonb_build_object(
        'scope', scope,
        'owner', CASE scope WHEN 'user' THEN job_tags.owner_id::text ELSE '' END
    );
END
$fn$;

-- The rows Coder's workspace builder writes for a build, shared by create, delete and the
-- cancel's orphan delete: for each given workspace a provisioner job and a build, the build's
-- parameters, and one provisioner wake-up per distinct (organization, provisioner, tags).
-- Called once per action with parallel arrays (one element per build):
--   workspace_ids, version_ids, preset_ids, build_numbers as the build gets them;
--   previous_build_ids: the build whose provisioner_state and parameters the new one repeats
--     (deletes); NULL: no state, the preset's parameters (creates).
-- workspace_tags: the version's workspace tags evaluated for the builds without a previous
-- build (creates; validated by create_prebuilds). A build with a previous build repeats the
-- workspace tags of that build's job (the keys the version declares), as Coder evaluates the
-- same expressions with the same parameters again: a delete goes to the provisioners that
-- built the prebuild.
-- Conventions that match Coder's builder:
--   * the job belongs to the template's organization and provisioner; storage method, file
--     and tags come from the version's import job (template_versions.job_id), the tags merged
--     with the workspace tags by job_tags (owner: the prebuilds user);
--   * input {"workspace_build_id": <build>, "dry_run": false, "prebuilt_workspace_stage": 1}:
--     stage 1 marks every build the prebuilds user starts, deletes included, as Coder does;
--   * deadline and max_deadline keep the zero instant (the provisioner sets them on success).
-- `completed`: the job is done at once (started = completed = now: the cancel's orphan
-- delete, which no provisioner has to run). Wake-ups are posted for those too, as Coder posts
-- one for a batch of canceled prebuilds: the provisioners look for work again.
-- A version without an import job leaves the job's NOT NULL columns empty: the insert fails
-- with a not-null violation (create_prebuilds refuses such a version before, with 23V01).
-- Joins are LEFT joins on purpose: a missing row fails loudly instead of dropping a build
-- silently.
DROP FUNCTION IF EXISTS prebuildd.queue_builds(
    text, boolean, timestamptz, jsonb, uuid[], uuid[], uuid[], integer[], uuid[]
);
CREATE OR REPLACE FUNCTION prebuildd.queue_builds(
    transition text,
    completed boolean,
    now_at timestamptz,
    trace_metadata jsonb,
    workspace_ids uuid[],
    version_ids uuid[],
    preset_ids uuid[],
    build_numbers integer[],
    previous_build_ids uuid[],
    workspace_tags jsonb
)
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    postings bigint;
BEGIN
    WITH spec AS MATERIALIZED (
        SELECT
            s.workspace_id, s.template_version_id, s.preset_id, s.build_number,
            s.previous_build_id,
            gen_random_uuid() AS build_id,
            gen_random_uuid() AS job_id
        FROM unnest(
            queue_builds.workspace_ids, queue_builds.version_ids, queue_builds.preset_ids,
            queue_builds.build_numbers, queue_builds.previous_build_ids
        ) AS s (workspace_id, template_version_id, preset_id, build_number, previous_build_id)
    ),
    -- Once per distinct version, not per build. Each lookup is a primary-key probe (OFFSET 0
    -- keeps it a lookup): the planner, guessing 200 versions, would otherwise hash whole
    -- tables, provisioner_jobs among them.
    origin AS MATERIALIZED (
        SELECT
            d.template_version_id,
            src.organization_id,
            src.provisioner,
            src.storage_method,
            src.file_id,
            src.tags AS import_tags,
            src.import_job_id,
            -- The tags of the builds without a previous build, computed once.
            CASE WHEN src.import_job_id IS NOT NULL THEN
                prebuildd.job_tags(
                    src.tags, queue_builds.workspace_tags, prebuildd.prebuilds_user_id()
                )
            END AS tags,
            ARRAY(
                SELECT wt.key
                FROM template_version_workspace_tags AS wt
                WHERE wt.template_version_id = d.template_version_id
            ) AS declared
        FROM (SELECT DISTINCT sp.template_version_id FROM spec AS sp) AS d
        LEFT JOIN LATERAL (
            SELECT
                t.organization_id, t.provisioner, ij.id AS import_job_id, ij.storage_method,
                ij.file_id, ij.tags
            FROM template_versions AS v
            LEFT JOIN templates AS t ON t.id = v.template_id
            LEFT JOIN provisioner_jobs AS ij ON ij.id = v.job_id
            WHERE v.id = d.template_version_id
            OFFSET 0
        ) AS src ON true
    ),
    planned AS MATERIALIZED (
        SELECT
            sp.*, o.organization_id, o.provisioner, o.storage_method, o.file_id,
            CASE
                WHEN o.import_job_id IS NULL THEN NULL
                WHEN sp.previous_build_id IS NULL OR cardinality(o.declared) = 0 THEN o.tags
                ELSE prebuildd.job_tags(
                    o.import_tags,
                    (
                        SELECT jsonb_object_agg(e.key, e.value)
                        FROM workspace_builds AS prev
                        JOIN provisioner_jobs AS pj ON pj.id = prev.job_id
                        CROSS JOIN LATERAL jsonb_each(pj.tags) AS e
                        WHERE prev.id = sp.previous_build_id
                          AND e.key = ANY(o.declared)
                    ),
                    prebuildd.prebuilds_user_id()
                )
            END AS tags
        FROM spec AS sp
        LEFT JOIN origin AS o ON o.template_version_id = sp.template_version_id
    ),
    new_jobs AS (
        INSERT INTO provisioner_jobs (
            id, created_at, updated_at, started_at, completed_at, organization_id,
            initiator_id, provisioner, storage_method, type, input, file_id, tags,
            trace_metadata
        )
        SELECT
            p.job_id, now_at, now_at,
            CASE WHEN completed THEN now_at END,
            CASE WHEN completed THEN now_at END,
            p.organization_id, prebuildd.prebuilds_user_id(), p.provisioner,
            p.storage_method, 'workspace_build',
            jsonb_build_object(
                'workspace_build_id', p.build_id,
                'dry_run', false,
                'prebuilt_workspace_stage', 1
            ),
            p.file_id, p.tags, queue_builds.trace_metadata
        FROM planned AS p
        RETURNING id
    ),
    new_builds AS (
        INSERT INTO workspace_builds (
            id, created_at, updated_at, workspace_id, template_version_id, build_number,
            transition, initiator_id, provisioner_state, job_id, deadline, max_deadline,
            reason, template_version_preset_id
        )
        SELECT
            p.build_id, now_at, now_at, p.workspace_id, p.template_version_id, p.build_number,
            queue_builds.transition::workspace_transition, prebuildd.prebuilds_user_id(),
            -- Copied here, server-side: the service role cannot read Terraform state.
            (
                SELECT prev.provisioner_state
                FROM workspace_builds AS prev
                WHERE prev.id = p.previous_build_id
            ),
            p.job_id, '0001-01-01 00:00:00+00', '0001-01-01 00:00:00+00', 'initiator',
            p.preset_id
        FROM planned AS p
        RETURNING id
    ),
    -- Index probes per build (OFFSET 0 again): a hash join would read the whole table.
    new_parameters AS (
        INSERT INTO workspace_build_parameters (workspace_build_id, name, value)
        SELECT p.build_id, param.name, param.value
        FROM planned AS p
        CROSS JOIN LATERAL (
            SELECT pp.name, pp.value
            FROM template_version_preset_parameters AS pp
            WHERE p.previous_build_id IS NULL
              AND pp.template_version_preset_id = p.preset_id
            UNION ALL
            SELECT bp.name, bp.value
            FROM workspace_build_parameters AS bp
            WHERE bp.workspace_build_id = p.previous_build_id
            OFFSET 0
        ) AS param
        RETURNING workspace_build_id
    ),
    posted AS (
        SELECT pg_notify(
            'provisioner_job_posted',
            jsonb_build_object(
                'organization_id', d.organization_id, 'type', d.provisioner, 'tags', d.tags
            )::text
        )
        FROM (SELECT DISTINCT p.organization_id, p.provisioner, p.tags FROM planned AS p) AS d
    )
    -- The inserts run whether or not they are read (data-modifying WITH runs to completion);
    -- `posted` is a plain SELECT and runs only because it is read here.
    SELECT count(*) INTO postings FROM posted;
    RETURN postings;
END
$fn$;

-- ---------------------------------------------------------------------------------------------
-- Entry points of the service role
-- ---------------------------------------------------------------------------------------------

-- `count` new prebuilds of one preset: workspace, pending job, build 1 (`start`) and the
-- preset's parameters for each. Only for a preset that wants prebuilds on the active version
-- of a live, non-deprecated template; anything else creates nothing (a promotion that raced
-- the plan). Returns one row per workspace created, with the number of wake-ups posted.
--
-- Refused before anything is written (see the error codes at the top):
--   * 23V01 when no build can ever be made from the version: its import job is missing, or
--     failed, or was canceled (Coder's builder refuses those as bad requests too);
--   * 55000 while the import is still pending or running (retried later);
--   * 22023 unless `workspace_tags` is a JSON object of strings with exactly the keys of the
--     version's template_version_workspace_tags: the service evaluates the tag expressions
--     (prebuildd.workspace_tags), and this function makes sure that no job goes out without
--     the tags the template routes builds by, nor with tags the template does not declare.
-- The tags are merged into the jobs' tags by job_tags (`owner` derived, never taken).
DROP FUNCTION IF EXISTS prebuildd.create_prebuilds(uuid, uuid, integer, timestamptz, jsonb);
CREATE OR REPLACE FUNCTION prebuildd.create_prebuilds(
    preset_id uuid,
    template_version_id uuid,
    count integer,
    now_at timestamptz,
    trace_metadata jsonb,
    workspace_tags jsonb
)
RETURNS TABLE (workspace_id uuid, postings bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    source record;
    mismatch text;
    created uuid[];
    posted bigint;
BEGIN
    IF create_prebuilds.count IS NULL OR create_prebuilds.count <= 0 THEN
        RETURN;
    END IF;
    SELECT
        t.id AS template_id, t.organization_id, v.name AS version_name,
        ij.id AS import_job_id, ij.job_status::text AS import_status
    INTO source
    FROM template_version_presets AS p
    JOIN template_versions AS v ON v.id = p.template_version_id
    JOIN templates AS t ON t.id = v.template_id
    LEFT JOIN provisioner_jobs AS ij ON ij.id = v.job_id
    WHERE p.id = create_prebuilds.preset_id
      AND v.id = create_prebuilds.template_version_id
      AND p.desired_instances IS NOT NULL
      AND t.active_version_id = v.id
      AND NOT t.deleted
      AND t.deprecated = '';
    IF NOT FOUND THEN
        RETURN;
    END IF;

    -- Text comparisons: the job_status labels stay out of the function's text.
    IF source.import_job_id IS NULL OR source.import_status IN ('failed', 'canceled') THEN
        RAISE EXCEPTION 'template version % (%) cannot be built: its import job %',
                        source.version_name, create_prebuilds.template_version_id,
                        COALESCE(source.import_status, 'does not exist')
            USING ERRCODE = '23V01',
                  HINT = 'Publish a template version that imports successfully.';
    END IF;
    IF source.import_status <> 'succeeded' THEN
        RAISE EXCEPTION 'template version % (%) is still being imported (%)',
                        source.version_name, create_prebuilds.template_version_id,
                        source.import_status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;

    IF create_prebuilds.workspace_tags IS NULL
       OR jsonb_typeof(create_prebuilds.workspace_tags) <> 'object' THEN
        RAISE EXCEPTION 'workspace_tags must be a JSON object, not %',
                        COALESCE(jsonb_typeof(create_prebuilds.workspace_tags), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT string_agg(pg_catalog.format('%s (%s)', COALESCE(g.key, d.key),
                      CASE WHEN g.key IS NULL THEN 'missing'
                           WHEN d.key IS NULL THEN 'not declared by the version'
                           ELSE 'not a string' END), ', ')
    INTO mismatch
    FROM jsonb_each(create_prebuilds.workspace_tags) AS g (key, value)
    FULL JOIN (
        SELECT wt.key
        FROM template_version_workspace_tags AS wt
        WHERE wt.template_version_id = create_prebuilds.template_version_id
    ) AS d ON d.key = g.key
    WHERE g.key IS NULL OR d.key IS NULL OR jsonb_typeof(g.value) <> 'string';
    IF mismatch IS NOT NULL THEN
        RAISE EXCEPTION 'workspace tags of template version % rejected: %',
                        create_prebuilds.template_version_id, mismatch
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    WITH new_workspaces AS (
        INSERT INTO workspaces (
            id, created_at, updated_at, owner_id, organization_id, template_id, deleted, name,
            autostart_schedule, ttl, last_used_at, automatic_updates, favorite, next_start_at
        )
        SELECT
            gen_random_uuid(), now_at, now_at, prebuildd.prebuilds_user_id(),
            source.organization_id, source.template_id, false,
            -- 64 random bits: unique per owner in practice; Coder's names are as short.
            'prebuild-' || left(md5(gen_random_uuid()::text), 16),
            NULL, NULL, now_at, 'never', false, NULL
        FROM generate_series(1, create_prebuilds.count)
        RETURNING id
    )
    SELECT array_agg(w.id) INTO created FROM new_workspaces AS w;

    posted := prebuildd.queue_builds(
        'start', false, now_at, create_prebuilds.trace_metadata, created,
        array_fill(create_prebuilds.template_version_id, ARRAY[create_prebuilds.count]),
        array_fill(create_prebuilds.preset_id, ARRAY[create_prebuilds.count]),
        array_fill(1, ARRAY[create_prebuilds.count]),
        array_fill(NULL::uuid, ARRAY[create_prebuilds.count]),
        create_prebuilds.workspace_tags
    );
    RETURN QUERY SELECT c.id, posted FROM unnest(created) AS c (id);
END
$fn$;

-- Queue a `delete` build for each given workspace that is, at this instant and under a row
-- lock, still an unclaimed prebuild whose latest build is a succeeded `start`. The lock is
-- what makes a racing claim safe: a claim locks the same workspace row (FOR UPDATE SKIP
-- LOCKED), so either it sees our lock and picks another prebuild, or it committed first and
-- the re-check of owner_id after the lock wait drops the workspace here (READ COMMITTED).
-- The delete build repeats the latest build's version, preset, provisioner state and
-- parameters, as Coder's builder does for a delete without an explicit version. Any other
-- workspace (a user's, a deleted one, an unknown id) is skipped: it is not in the result.
CREATE OR REPLACE FUNCTION prebuildd.delete_prebuilds(
    workspace_ids uuid[],
    now_at timestamptz,
    trace_metadata jsonb
)
RETURNS TABLE (workspace_id uuid, postings bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    doomed uuid[];
    versions uuid[];
    presets uuid[];
    numbers integer[];
    previous uuid[];
    posted bigint;
BEGIN
    WITH candidates AS MATERIALIZED (
        SELECT w.id
        FROM workspaces AS w
        WHERE w.id = ANY(delete_prebuilds.workspace_ids)
          AND w.owner_id = prebuildd.prebuilds_user_id()
          AND NOT w.deleted
        FOR UPDATE OF w
    )
    SELECT
        array_agg(c.id), array_agg(lb.template_version_id),
        array_agg(lb.template_version_preset_id), array_agg(lb.build_number + 1),
        array_agg(lb.id)
    INTO doomed, versions, presets, numbers, previous
    FROM candidates AS c
    CROSS JOIN LATERAL (
        SELECT
            b.id, b.build_number, b.transition, b.template_version_id,
            b.template_version_preset_id, b.job_id
        FROM workspace_builds AS b
        WHERE b.workspace_id = c.id
        ORDER BY b.build_number DESC
        LIMIT 1
    ) AS lb
    JOIN provisioner_jobs AS j ON j.id = lb.job_id
    WHERE lb.transition = 'start'
      AND j.job_status = 'succeeded';
    IF doomed IS NULL THEN
        RETURN;
    END IF;

    posted := prebuildd.queue_builds(
        'delete', false, now_at, delete_prebuilds.trace_metadata,
        doomed, versions, presets, numbers, previous, '{}'::jsonb
    );
    RETURN QUERY SELECT d.id, posted FROM unnest(doomed) AS d (id);
END
$fn$;

-- For one preset: cancel the queued first `start` jobs of prebuilds on a retired version and
-- retire those never-built workspaces. Strict scope: the preset's prebuilds (owned by the
-- prebuilds user, build 1 and job started by it), no later build, transition `start`, a
-- version that is not the template's active one (or a deleted or deprecated template), a job
-- nobody picked up (pending, worker_id NULL, neither canceled nor completed).
--
-- Rows are locked with SKIP LOCKED: a provisioner acquiring a job locks it first, and a job
-- it holds is about to run, so it is not ours to cancel. After waiting on nothing, the
-- conditions above are those of the locked rows.
--
-- Each canceled workspace gets build 2, a `delete` whose job is already completed
-- (succeeded, started = completed = now): nothing was provisioned, so no provisioner has
-- anything to destroy -- Coder completes an orphan delete the same way when no provisioner
-- is available. The workspace is then marked deleted. Provisioners are woken at commit
-- (`provisioner_job_posted`, one per distinct organization, provisioner and tags; Coder
-- posts one per batch): the queue they were waiting on changed. Returns the retired
-- workspaces.
CREATE OR REPLACE FUNCTION prebuildd.cancel_pending_prebuilds(
    preset_id uuid,
    now_at timestamptz
)
RETURNS TABLE (workspace_id uuid)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    doomed uuid[];
    versions uuid[];
    presets uuid[];
    first_builds uuid[];
BEGIN
    WITH locked AS MATERIALIZED (
        SELECT
            w.id AS workspace_id,
            b.id AS build_id,
            b.template_version_id,
            b.template_version_preset_id,
            j.id AS job_id
        FROM workspace_builds AS b
        JOIN workspaces AS w ON w.id = b.workspace_id
        JOIN templates AS t ON t.id = w.template_id
        JOIN provisioner_jobs AS j ON j.id = b.job_id
        WHERE b.template_version_preset_id = cancel_pending_prebuilds.preset_id
          AND b.build_number = 1
          AND b.transition = 'start'
          AND b.initiator_id = prebuildd.prebuilds_user_id()
          AND j.initiator_id = prebuildd.prebuilds_user_id()
          -- Only prebuilds nobody wants any more: a superseded version, or a template that
          -- was deleted or deprecated (its active version gets no prebuilds either).
          AND (b.template_version_id <> t.active_version_id OR t.deleted OR t.deprecated <> '')
          AND w.owner_id = prebuildd.prebuilds_user_id()
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
        SET canceled_at = now_at, completed_at = now_at, updated_at = now_at
        FROM locked AS l
        WHERE j.id = l.job_id
        RETURNING j.id
    )
    SELECT
        array_agg(l.workspace_id), array_agg(l.template_version_id),
        array_agg(l.template_version_preset_id), array_agg(l.build_id)
    INTO doomed, versions, presets, first_builds
    FROM locked AS l;
    IF doomed IS NULL THEN
        RETURN;
    END IF;

    PERFORM prebuildd.queue_builds(
        'delete', true, now_at, NULL, doomed, versions, presets,
        array_fill(2, ARRAY[cardinality(doomed)]), first_builds, '{}'::jsonb
    );
    RETURN QUERY
    WITH retired AS (
        UPDATE workspaces AS w
        SET deleted = true
        WHERE w.id = ANY(doomed)
        RETURNING w.id
    )
    SELECT r.id FROM retired AS r;
END
$fn$;

-- Store a preset's prebuild status: only a value of Coder's prebuild_status (anything else
-- fails with invalid_text_representation). Returns the status stored, no row when the
-- preset does not exist.
CREATE OR REPLACE FUNCTION prebuildd.set_preset_status(preset_id uuid, status text)
RETURNS SETOF text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    stored text;
BEGIN
    UPDATE template_version_presets AS p
    SET prebuild_status = set_preset_status.status::prebuild_status
    WHERE p.id = set_preset_status.preset_id
    RETURNING p.prebuild_status::text INTO stored;
    IF FOUND THEN
        RETURN NEXT stored;
    END IF;
END
$fn$;

-- Tell the template's admins that a preset stopped getting prebuilds: Coder's "Prebuild Failure
-- Limit Reached" notification, through Coder's own queue (Coder's notifier delivers it). Only
-- for a preset that IS hard_limited right now (the caller stores the status in the same
-- transaction first). Recipients, methods and payload are chosen here, the way Coder's
-- enqueuer (coderd/notifications) chooses them, as far as the database shows it:
--   * recipients: site-level owners and template admins (users.rbac_roles), and the
--     organization admins and organization template admins of the template's organization
--     (organization_members.roles); never deleted or system users. Like Coder's own template
--     admin notices (GetUsers), the user's status does not matter: dormant and suspended
--     admins are notified too.
--   * methods: the notification template's own method when it names one
--     (notification_templates.method); else the deployment's default method, which only
--     Coder's configuration knows: `default_method` is the caller's mirror of it ('smtp' or
--     'webhook', CODER_NOTIFICATIONS_METHOD; NULL when Coder has neither SMTP nor a webhook
--     configured, so no default method); plus 'inbox' when Coder Inbox is on (`inbox`,
--     CODER_NOTIFICATIONS_INBOX_ENABLED) and not chosen already. 'inbox' cannot be the
--     default method (Coder refuses that configuration too).
--   * preferences: nothing for a user who disabled this notification, nor, when the template
--     is disabled by default, for one who did not enable it (Coder's enqueue trigger refuses
--     those rows; here they are left out, so that one admin's preference cannot fail the whole
--     statement and silence every other admin).
--   * dedupe: Coder's dedupe hash (payload, targets and the UTC day of created_at) lets one
--     message per user, method and day through; the others are skipped as Coder skips them.
--     created_at is the server's clock, not the caller's, so a caller cannot date messages
--     into other days.
--   * payload: Coder's MessagePayload v1.2 (labels org, template, template_version, preset;
--     targets: template, version, preset, organization). Its `actions` stay empty: Coder
--     renders them with its access URL, which the database does not hold.
-- Returns (user, method) of every message queued.
DROP FUNCTION IF EXISTS prebuildd.notify_hard_limited(uuid);
CREATE OR REPLACE FUNCTION prebuildd.notify_hard_limited(
    preset_id uuid, default_method text, inbox boolean
)
RETURNS TABLE (user_id uuid, method text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
BEGIN
    IF notify_hard_limited.default_method IS NOT NULL
       AND notify_hard_limited.default_method NOT IN ('smtp', 'webhook') THEN
        RAISE EXCEPTION 'default notification method % is not smtp or webhook',
                        notify_hard_limited.default_method
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    WITH limited AS (
        SELECT
            p.id AS preset_id, p.name AS preset_name, tv.id AS version_id,
            tv.name AS version_name, t.id AS template_id, t.name AS template_name,
            o.id AS organization_id, o.name AS organization_name
        FROM template_version_presets AS p
        JOIN template_versions AS tv ON tv.id = p.template_version_id
        JOIN templates AS t ON t.id = tv.template_id
        JOIN organizations AS o ON o.id = t.organization_id
        WHERE p.id = notify_hard_limited.preset_id
          AND p.prebuild_status = 'hard_limited'
    ),
    notice AS (
        SELECT nt.id, nt.name, nt.method::text AS own_method, nt.enabled_by_default
        FROM notification_templates AS nt
        WHERE nt.id = '414d9331-c1fc-4761-b40c-d1f4702279eb'::uuid
    ),
    methods AS (
        SELECT DISTINCT m.method
        FROM notice AS n
        CROSS JOIN LATERAL (
            VALUES
                (COALESCE(n.own_method, notify_hard_limited.default_method)),
                (CASE WHEN notify_hard_limited.inbox THEN 'inbox' END)
        ) AS m (method)
        WHERE m.method IS NOT NULL
    ),
    recipients AS (
        SELECT
            u.id, u.email, COALESCE(NULLIF(u.name, ''), NULLIF(u.username, '')) AS name,
            u.username, l.*
        FROM limited AS l
        JOIN users AS u ON NOT u.deleted AND NOT u.is_system
        CROSS JOIN notice AS n
        LEFT JOIN notification_preferences AS pref
            ON pref.user_id = u.id AND pref.notification_template_id = n.id
        WHERE (
                u.rbac_roles && ARRAY['owner', 'template-admin']::text[]
                OR EXISTS (
                    SELECT 1
                    FROM organization_members AS om
                    WHERE om.user_id = u.id
                      AND om.organization_id = l.organization_id
                      AND om.roles && ARRAY[
                          'organization-admin', 'organization-template-admin'
                      ]::text[]
                )
            )
          AND CASE
                  WHEN pref.user_id IS NULL THEN n.enabled_by_default
                  ELSE NOT pref.disabled
              END
    ),
    queued AS (
        INSERT INTO notification_messages (
            id, notification_template_id, user_id, method, status, created_by, payload,
            targets, created_at
        )
        SELECT
            gen_random_uuid(),
            n.id,
            r.id,
            m.method::notification_method,
            'pending',
            'prebuildd',
            jsonb_build_object(
                '_version', '1.2',
                'notification_name', n.name,
                'notification_template_id', n.id,
                'user_id', r.id,
                'user_email', r.email,
                'user_name', r.name,
                'user_username', r.username,
                'actions', '[]'::jsonb,
                'labels', jsonb_build_object(
                    'org', r.organization_name,
                    'template', r.template_name,
                    'template_version', r.version_name,
                    'preset', r.preset_name
                ),
                'data', NULL,
                'targets', jsonb_build_array(
                    r.template_id, r.version_id, r.preset_id, r.organization_id
                )
            ),
            ARRAY[r.template_id, r.version_id, r.preset_id, r.organization_id],
            now()
        FROM recipients AS r
        CROSS JOIN notice AS n
        CROSS JOIN methods AS m
        ON CONFLICT (dedupe_hash) DO NOTHING
        RETURNING user_id, method::text
    )
    SELECT q.user_id, q.method FROM queued AS q;
END
$fn$;

-- `prebuildd invalidate`: every prebuild of the preset created before `now_at` becomes expired
-- and is replaced. Writes last_invalidated_at and nothing else. Coder releases before v2.29
-- (migration 000399) have no such column: say so rather than fail obscurely. Returns the
-- preset's id, no row when it does not exist.
CREATE OR REPLACE FUNCTION prebuildd.invalidate_preset(preset_id uuid, now_at timestamptz)
RETURNS SETOF uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    invalidated uuid;
BEGIN
    IF NOT EXISTS (
        SELECT 1
        FROM pg_catalog.pg_attribute AS a
        WHERE a.attrelid = to_regclass('template_version_presets')
          AND a.attname = 'last_invalidated_at'
          AND NOT a.attisdropped
    ) THEN
        RAISE EXCEPTION 'cannot invalidate presets: this Coder release has no '
                        'template_version_presets.last_invalidated_at'
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Preset invalidation needs Coder v2.29 or later.';
    END IF;
    UPDATE template_version_presets AS p
    SET last_invalidated_at = now_at
    WHERE p.id = invalidate_preset.preset_id
    RETURNING p.id INTO invalidated;
    IF FOUND THEN
        RETURN NEXT invalidated;
    END IF;
END
$fn$;

-- Coder's pause switch (site_configs 'prebuilds_settings' = {"reconciliation_paused": bool}),
-- first defined by sql/schema/0002_pause_switch.sql (immutable): redefined here so that its
-- search_path, too, puts pg_temp last. Other keys of the JSON object are preserved.
CREATE OR REPLACE FUNCTION prebuildd.set_reconciliation_paused(paused boolean)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $fn$
    INSERT INTO site_configs (key, value)
    VALUES ('prebuilds_settings', jsonb_build_object('reconciliation_paused', paused)::text)
    ON CONFLICT (key) DO UPDATE
    SET value = (
        COALESCE(NULLIF(site_configs.value, '')::jsonb, '{}'::jsonb)
        || jsonb_build_object('reconciliation_paused', paused)
    )::text;
$fn$;

-- Functions are executable by PUBLIC unless revoked; the role script grants the entry points.
REVOKE ALL ON FUNCTION prebuildd.prebuilds_user_id() FROM PUBLIC;
REVOKE ALL ON FUNCTION prebuildd.job_tags(jsonb, jsonb, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION prebuildd.queue_builds(
    text, boolean, timestamptz, jsonb, uuid[], uuid[], uuid[], integer[], uuid[], jsonb
) FROM PUBLIC;
REVOKE ALL ON FUNCTION prebuildd.create_prebuilds(
    uuid, uuid, integer, timestamptz, jsonb, jsonb
) FROM PUBLIC;
REVOKE ALL ON FUNCTION prebuildd.delete_prebuilds(uuid[], timestamptz, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION prebuildd.cancel_pending_prebuilds(uuid, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION prebuildd.set_preset_status(uuid, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION prebuildd.notify_hard_limited(uuid, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION prebuildd.invalidate_preset(uuid, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION prebuildd.set_reconciliation_paused(boolean) FROM PUBLIC;
