-- The cap on pending prebuild create jobs (`--max-pending-prebuild-jobs`, SPEC section 9):
-- at most N prebuild create jobs nobody has picked up yet, per organization and provisioner
-- tag set, counted in the database so that it holds across replicas.
--
-- The race it must win: two replicas each count N-1 pending jobs and both create. So every
-- count that decides a create is taken under a transaction-level advisory lock of the tag set
-- (key1 0x50425448, 'PBTH'; key2 the hash of organization and tags), held until the
-- reconcile commits: the second replica waits for the first to commit, then counts the first
-- one's jobs too (READ COMMITTED: each statement sees what committed before it started).
-- The wait is between prebuildd's own transactions only: Coder never takes these locks, and
-- nothing here locks a row of Coder's.
--
-- Deadlocks: a reconcile may create for several tag sets. It takes all of their locks first,
-- in one call of throttle_lines, in ascending key order; two transactions that take their
-- locks in one global order cannot wait on each other in a cycle. create_prebuilds_capped
-- takes its tag set's lock again (already held: no wait), so the cap is enforced here, where
-- the rows are written, whatever the caller computed.
--
-- Same rules as prebuild_writes.sql: SECURITY DEFINER entry points with a pinned search_path
-- (pg_temp last), PL/pgSQL or string-bodied SQL only (no catalog dependency on Coder's
-- columns), built-in types at the boundary, revoked from PUBLIC. The service role reads no
-- job tags itself: these functions do, as their owner.

CREATE SCHEMA IF NOT EXISTS prebuildd;

-- The search_path is pinned by `prebuildd migrate` before this file runs
-- (sql/queries/migrate.sql, pin_function_search_path).

-- ---------------------------------------------------------------------------------------------
-- Internal helpers (no grant to anyone but the owner)
-- ---------------------------------------------------------------------------------------------

-- The tag set of a prebuild create's jobs is what prebuildd.queue_builds writes into
-- provisioner_jobs.tags: prebuildd.job_tags (sql/functions/prebuild_writes.sql) of the
-- version's import job tags and the workspace tags evaluated for the preset, for the
-- prebuilds user. tests/integration/test_throttle.py checks that the two agree on every
-- shape of tags. (An earlier prebuild_job_tags(import_tags) knew no workspace tags.)
DROP FUNCTION IF EXISTS prebuildd.prebuild_job_tags(jsonb);

-- key2 of a tag set's advisory lock. jsonb's text form is canonical (keys sorted), so equal
-- tag sets give equal keys; two tag sets that hash alike merely share a lock. Inlined.
CREATE OR REPLACE FUNCTION prebuildd.throttle_lock_key(organization_id uuid, tags jsonb)
RETURNS integer
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
AS $fn$
    SELECT pg_catalog.hashtext(organization_id::text || ' ' || tags::text)
$fn$;

-- The (organization, tag set) of the prebuild create jobs of each given (version, evaluated
-- workspace tags): `workspace_tags` is a JSON array parallel to `version_ids` (an object
-- per version; NULL, or an array too short: no workspace tags). A version without an import
-- job has none (its creates fail as invalid input anyway).
DROP FUNCTION IF EXISTS prebuildd.throttle_keys(uuid[]);
CREATE OR REPLACE FUNCTION prebuildd.throttle_keys(
    version_ids uuid[],
    workspace_tags jsonb DEFAULT NULL
)
RETURNS TABLE (
    template_version_id uuid,
    version_workspace_tags jsonb,
    organization_id uuid,
    tags jsonb
)
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
BEGIN
    IF COALESCE(cardinality(throttle_keys.version_ids), 0) = 0 THEN
        RETURN;
    END IF;
    -- Primary-key probes per version (OFFSET 0 keeps the lookup a lookup).
    RETURN QUERY
    SELECT
        want.id, want.tags, src.organization_id,
        prebuildd.job_tags(src.tags, want.tags, prebuildd.prebuilds_user_id())
    FROM (
        SELECT DISTINCT
            u.id,
            COALESCE(throttle_keys.workspace_tags -> (u.n - 1)::int, '{}'::jsonb) AS tags
        FROM unnest(throttle_keys.version_ids) WITH ORDINALITY AS u (id, n)
    ) AS want
    CROSS JOIN LATERAL (
        SELECT t.organization_id, ij.tags
        FROM template_versions AS v
        JOIN templates AS t ON t.id = v.template_id
        JOIN provisioner_jobs AS ij ON ij.id = v.job_id
        WHERE v.id = want.id
        OFFSET 0
    ) AS src;
END
$fn$;

-- Prebuild create jobs of one tag set that no provisioner has picked up: pending (not
-- started, canceled or finished), started by the prebuilds user, building a `start`. Deletes
-- are never held, so they do not count. Read through prebuildd's index of the organization's
-- queued prebuild jobs (sql/schema/0006_prebuild_queue_index.sql), whose rows the cap keeps
-- few; the status is tested above an OFFSET 0 so that the planner does not also intersect
-- Coder's index of every job's status (all of people's queued jobs).
CREATE OR REPLACE FUNCTION prebuildd.pending_prebuild_creates(organization_id uuid, tags jsonb)
RETURNS bigint
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    pending bigint;
BEGIN
    SELECT count(*)
    INTO pending
    FROM (
        SELECT j.id, j.job_status
        FROM provisioner_jobs AS j
        WHERE j.started_at IS NULL
          AND j.initiator_id = prebuildd.prebuilds_user_id()
          AND j.organization_id = pending_prebuild_creates.organization_id
          AND j.tags = pending_prebuild_creates.tags
          AND j.type = 'workspace_build'
        OFFSET 0
    ) AS queued
    JOIN workspace_builds AS b ON b.job_id = queued.id
    WHERE queued.job_status = 'pending'
      AND b.transition = 'start';
    RETURN pending;
END
$fn$;

-- ---------------------------------------------------------------------------------------------
-- Entry points of the service role
-- ---------------------------------------------------------------------------------------------

-- What a reconcile needs to share out room under the cap, read under the tag sets' locks.
-- The tag sets: those of the given creates (each a version and its evaluated workspace tags,
-- `workspace_tags` a JSON array parallel to `version_ids`, see throttle_keys), and those the
-- given templates' presets wait on (a reconcile may take a preset out of its line). With
-- `take_locks`, their advisory locks are taken first, in ascending key order, and held until
-- the caller's transaction ends; without (`reconcile --dry-run`, `status`), nothing is
-- locked. Rows, by `kind`:
--   version  the tag set of each given (version, workspace tags) (both returned);
--   key      each tag set's pending prebuild create jobs;
--   waiter   every preset waiting in those tag sets' lines (any template's).
DROP FUNCTION IF EXISTS prebuildd.throttle_lines(uuid[], uuid[], boolean);
CREATE OR REPLACE FUNCTION prebuildd.throttle_lines(
    version_ids uuid[],
    workspace_tags jsonb,
    template_ids uuid[],
    take_locks boolean
)
RETURNS TABLE (
    kind text,
    template_version_id uuid,
    version_workspace_tags jsonb,
    organization_id uuid,
    tags jsonb,
    pending bigint,
    preset_id uuid,
    template_id uuid,
    held integer,
    waiting_since timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    versions uuid[];
    version_workspace_tags jsonb[];
    version_orgs uuid[];
    version_tags jsonb[];
    key_orgs uuid[];
    key_tags jsonb[];
    lock_key integer;
BEGIN
    -- The tag sets, known before any lock: a version's never changes (its import job is
    -- immutable), and only reconciles of these templates, which hold their locks, change
    -- their entries in the lines.
    SELECT array_agg(tk.template_version_id), array_agg(tk.version_workspace_tags),
           array_agg(tk.organization_id), array_agg(tk.tags)
    INTO versions, version_workspace_tags, version_orgs, version_tags
    FROM prebuildd.throttle_keys(
        throttle_lines.version_ids, throttle_lines.workspace_tags
    ) AS tk;
    SELECT array_agg(k.organization_id), array_agg(k.tags)
    INTO key_orgs, key_tags
    FROM (
        SELECT u.organization_id, u.tags
        FROM unnest(version_orgs, version_tags) AS u (organization_id, tags)
        UNION
        SELECT tw.organization_id, tw.tags
        FROM prebuildd.throttle_waits AS tw
        WHERE tw.template_id = ANY(throttle_lines.template_ids)
    ) AS k;
    IF key_orgs IS NULL THEN
        RETURN;  -- nothing to create, nobody of these templates waiting
    END IF;
    IF take_locks THEN
        -- One at a time, in ascending order (see the header): a loop, so the order is a
        -- guarantee rather than a property of a plan.
        FOR lock_key IN
            SELECT DISTINCT prebuildd.throttle_lock_key(k.organization_id, k.tags)
            FROM unnest(key_orgs, key_tags) AS k (organization_id, tags)
            ORDER BY 1
        LOOP
            PERFORM pg_catalog.pg_advisory_xact_lock(1346524232, lock_key);
        END LOOP;
    END IF;
    -- A new statement, so a new snapshot: everything committed before the locks were ours.
    RETURN QUERY
    SELECT
        'version'::text, v.id, v.workspace_tags, v.organization_id, v.tags, NULL::bigint,
        NULL::uuid, NULL::uuid, NULL::integer, NULL::timestamptz
    FROM unnest(versions, version_workspace_tags, version_orgs, version_tags)
        AS v (id, workspace_tags, organization_id, tags)
    UNION ALL
    SELECT
        'key', NULL, NULL, k.organization_id, k.tags,
        prebuildd.pending_prebuild_creates(k.organization_id, k.tags),
        NULL, NULL, NULL, NULL
    FROM unnest(key_orgs, key_tags) AS k (organization_id, tags)
    UNION ALL
    SELECT
        'waiter', NULL, NULL, tw.organization_id, tw.tags, NULL, tw.preset_id,
        tw.template_id, tw.held, tw.waiting_since
    FROM unnest(key_orgs, key_tags) AS k (organization_id, tags)
    JOIN prebuildd.throttle_waits AS tw
        ON tw.organization_id = k.organization_id AND tw.tags = k.tags;
END
$fn$;

-- `count` new prebuilds of one preset, but never so many that its tag set would have more
-- than `max_pending` pending prebuild create jobs: the cap, enforced where the rows are
-- written, under the tag set's lock. Fewer rows than asked (or none) mean the room ran out.
-- `max_pending` <= 0 is no cap. Otherwise exactly prebuildd.create_prebuilds (whose checks
-- of `workspace_tags` apply; they also decide the tag set counted).
DROP FUNCTION IF EXISTS prebuildd.create_prebuilds_capped(
    uuid, uuid, integer, timestamptz, jsonb, integer
);
CREATE OR REPLACE FUNCTION prebuildd.create_prebuilds_capped(
    preset_id uuid,
    template_version_id uuid,
    count integer,
    now_at timestamptz,
    trace_metadata jsonb,
    workspace_tags jsonb,
    max_pending integer
)
RETURNS TABLE (workspace_id uuid, postings bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    key record;
    wanted integer := create_prebuilds_capped.count;
    room bigint;
BEGIN
    IF wanted IS NULL OR wanted <= 0 THEN
        RETURN;
    END IF;
    IF COALESCE(create_prebuilds_capped.max_pending, 0) > 0 THEN
        SELECT tk.organization_id, tk.tags
        INTO key
        FROM prebuildd.throttle_keys(
            ARRAY[create_prebuilds_capped.template_version_id],
            pg_catalog.jsonb_build_array(create_prebuilds_capped.workspace_tags)
        ) AS tk;
        -- No key: the version has no import job, and create_prebuilds fails as invalid input.
        IF FOUND THEN
            PERFORM pg_catalog.pg_advisory_xact_lock(
                1346524232, prebuildd.throttle_lock_key(key.organization_id, key.tags));
            room := create_prebuilds_capped.max_pending
                    - prebuildd.pending_prebuild_creates(key.organization_id, key.tags);
            IF room <= 0 THEN
                RETURN;
            END IF;
            wanted := LEAST(wanted, room);
        END IF;
    END IF;
    RETURN QUERY
    SELECT c.workspace_id, c.postings
    FROM prebuildd.create_prebuilds(
        create_prebuilds_capped.preset_id, create_prebuilds_capped.template_version_id,
        wanted, create_prebuilds_capped.now_at, create_prebuilds_capped.trace_metadata,
        create_prebuilds_capped.workspace_tags
    ) AS c;
END
$fn$;

-- Replace the line entries of the given templates (whose reconcile holds their tag sets'
-- locks, taken by throttle_lines) with the given ones: presets of those templates that still
-- wait, with what they hold and since when. Entries of other templates are left alone, and
-- so are given entries of templates not in `template_ids`. Returns how many entries the
-- templates have now.
CREATE OR REPLACE FUNCTION prebuildd.record_throttle_waits(
    template_ids uuid[],
    preset_ids uuid[],
    preset_templates uuid[],
    organization_ids uuid[],
    tag_sets jsonb[],
    held integer[],
    waiting_since timestamptz[]
)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    kept integer;
BEGIN
    DELETE FROM prebuildd.throttle_waits AS tw
    WHERE tw.template_id = ANY(record_throttle_waits.template_ids)
      AND tw.preset_id <> ALL(COALESCE(record_throttle_waits.preset_ids, '{}'::uuid[]));
    INSERT INTO prebuildd.throttle_waits AS tw (
        preset_id, template_id, organization_id, tags, held, waiting_since
    )
    SELECT s.preset_id, s.template_id, s.organization_id, s.tags, s.held, s.waiting_since
    FROM unnest(
        record_throttle_waits.preset_ids, record_throttle_waits.preset_templates,
        record_throttle_waits.organization_ids, record_throttle_waits.tag_sets,
        record_throttle_waits.held, record_throttle_waits.waiting_since
    ) AS s (preset_id, template_id, organization_id, tags, held, waiting_since)
    WHERE s.template_id = ANY(record_throttle_waits.template_ids)
    ON CONFLICT (preset_id) DO UPDATE
    SET template_id = EXCLUDED.template_id,
        organization_id = EXCLUDED.organization_id,
        tags = EXCLUDED.tags,
        held = EXCLUDED.held,
        waiting_since = EXCLUDED.waiting_since;
    SELECT count(*) INTO kept
    FROM prebuildd.throttle_waits AS tw
    WHERE tw.template_id = ANY(record_throttle_waits.template_ids);
    RETURN kept;
END
$fn$;

REVOKE ALL ON FUNCTION prebuildd.throttle_lock_key(uuid, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION prebuildd.throttle_keys(uuid[], jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION prebuildd.pending_prebuild_creates(uuid, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION prebuildd.throttle_lines(uuid[], jsonb, uuid[], boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION prebuildd.create_prebuilds_capped(
    uuid, uuid, integer, timestamptz, jsonb, jsonb, integer
) FROM PUBLIC;
REVOKE ALL ON FUNCTION prebuildd.record_throttle_waits(
    uuid[], uuid[], uuid[], uuid[], jsonb[], integer[], timestamptz[]
) FROM PUBLIC;
