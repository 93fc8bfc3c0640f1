-- Reads of reconciliation state (service/prebuildd/store/snapshot.py).
--
-- Every per-template read takes `template_ids uuid[]` and starts from rows filtered by
-- template id, so its cost depends on the templates asked for, never on the size of the fleet.
-- None of them goes through Coder's views (workspace_latest_builds, workspace_prebuilds, ...):
-- those compute the latest build of *every* workspace before anything can filter them.
--
-- Indexes the plans rely on (Coder's own, plus sql/schema/0001_indexes.sql):
--   prebuildd_workspaces_template_owner   workspaces (template_id, owner_id) WHERE NOT deleted
--   workspace_builds_workspace_id_build_number_key   latest build of one workspace
--   provisioner_jobs_pkey, workspace_resources_job_id_idx, workspace_agents_resource_id_idx
--   template_versions_template_id_name_key   versions of a template
--   prebuildd_presets_template_version, prebuildd_preset_schedules_preset
--
-- The prebuilds user is spelled as the literal, on purpose. Not a parameter: these reads run
-- under generic plans (generic_plans_begin; psycopg prepares the others after five runs), and
-- a generic plan cannot see how common the prebuilds user is among owners -- snapshot_prebuilds
-- then reads every prebuild of the fleet through Coder's owner index instead of one template's
-- through prebuildd_workspaces_template_owner (1.1 ms against 7.5 ms for one template of a
-- 1,000-template fleet, and growing with the fleet). Not prebuildd.prebuilds_user_id(), which
-- the planner would inline as the same literal: the least-privilege role may not call it.

-- name: list_prebuild_templates
-- Templates with at least one preset that wants prebuilds, whatever the state of the template
-- or version: a deleted template or an old version may still have prebuilds to clean up.
SELECT DISTINCT v.template_id
FROM template_version_presets AS p
JOIN template_versions AS v ON v.id = p.template_version_id
WHERE p.desired_instances IS NOT NULL
  AND v.template_id IS NOT NULL
ORDER BY v.template_id;

-- name: lock_templates
-- Transaction-scoped advisory locks, one per template, taken without waiting. Key space:
-- the two-int form, key1 = 0x50424C44 ('PBLD' in ASCII) so that prebuildd never collides
-- with Coder's single-bigint lock ids, key2 = hashtext(template id). Two templates whose ids
-- hash alike merely serialise; correctness never depends on the hash being unique.
-- The function is volatile, so it runs exactly once per input row.
--
-- Coexistence with Coder's own reconciler: Coder's loop holds the single-bigint advisory
-- lock 7 (LockIDReconcilePrebuilds) exclusively for its whole cycle, and skips the cycle when
-- it cannot get it. Every prebuildd reconcile takes that lock *shared* first: prebuildd
-- replicas never block each other, but while any of them reconciles Coder's loop skips, and
-- while Coder's loop runs prebuildd sees every template as busy and retries shortly. So the
-- two can never fill the same deficit, even before Coder's loop is switched off.
SELECT t.id
FROM unnest(%(template_ids)s::uuid[]) AS t(id)
WHERE pg_try_advisory_xact_lock_shared(7::bigint)
  AND pg_try_advisory_xact_lock(1346522180, hashtext(t.id::text));

-- name: lock_status
-- Which of the templates a reconcile holds right now, and whether Coder's own loop is running,
-- from pg_locks alone: the read-only commands (`status`, `reconcile --dry-run`) must not take
-- the locks themselves, or replicas and Coder's loop would see those templates busy while an
-- operator looks. Granted locks of this database only: prebuildd's per-template key
-- (1346522180 = 0x50424C44, hashtext(id); the two-int form shows as objsubid 2 with the keys
-- as oids, so a negative hash is compared through the same int4 -> oid wrap-around), and
-- Coder's lock 7 (the bigint form: classid 0, objid 7, objsubid 1) held *exclusively* -- by
-- Coder's loop; prebuildd only ever holds it shared. pg_locks and pg_database are readable by
-- every role. A template whose id hashes like a busy one's is reported busy too.
WITH held AS MATERIALIZED (
    SELECT l.classid, l.objid, l.objsubid, l.mode
    FROM pg_catalog.pg_locks AS l
    WHERE l.locktype = 'advisory'
      AND l.granted
      AND l.database = (
          SELECT d.oid FROM pg_catalog.pg_database AS d WHERE d.datname = current_database()
      )
)
SELECT
    ARRAY(
        SELECT t.id
        FROM unnest(%(template_ids)s::uuid[]) AS t (id)
        WHERE EXISTS (
            SELECT 1
            FROM held AS h
            WHERE h.classid = 1346522180::oid
              AND h.objid = hashtext(t.id::text)::oid
              AND h.objsubid = 2
        )
    ) AS reconciling,
    EXISTS (
        SELECT 1
        FROM held AS h
        WHERE h.classid = 0::oid
          AND h.objid = 7::oid
          AND h.objsubid = 1
          AND h.mode = 'ExclusiveLock'
    ) AS coder_reconciling;

-- name: read_only_transaction
-- The read-only commands' transaction: nothing it runs may write (a later statement that
-- tried would fail). A transaction may always switch to read-only, also after its first query.
SELECT set_config('transaction_read_only', 'on', true);

-- name: snapshot_clock
-- The database's clock, read in the snapshot's pipeline (service/prebuildd/clock.py): now(),
-- the transaction's start, is the instant the plans are made at, the one backoff's lookback
-- (snapshot_prebuilds) is measured from and the one the writes record; clock_timestamp(), the
-- instant this statement runs, anchors the reconcile's timers on the host's monotonic clock.
-- Never the replica's wall clock: Coder's timestamps come from this server.
SELECT now(), clock_timestamp();

-- name: prebuilds_settings
-- Coder's pause switch: site_configs 'prebuilds_settings' = {"reconciliation_paused": true}.
-- Returned as text and parsed by the caller, so a malformed value is reported, not fatal.
-- Read through prebuildd's security-definer function for that one row
-- (sql/functions/pause_switch.sql): one row, NULL when the key is absent.
SELECT prebuildd.prebuilds_settings() AS value;

-- name: generic_plans_begin
-- Reuse one plan per connection for the snapshot reads. psycopg prepares a statement after a
-- few executions, but PostgreSQL keeps re-planning `= ANY($1::uuid[])` queries with custom
-- plans (their estimate for one template always beats the generic one), and planning the
-- prebuild read costs more than running it. The generic plans are the same index nested
-- loops. Transaction-local; generic_plans_end restores the caller's setting.
SELECT
    set_config('prebuildd.saved_plan_cache_mode', current_setting('plan_cache_mode'), true),
    set_config('plan_cache_mode', 'force_generic_plan', true);

-- name: generic_plans_end
SELECT set_config(
    'plan_cache_mode',
    COALESCE(
        NULLIF(current_setting('prebuildd.saved_plan_cache_mode', true), ''),
        current_setting('plan_cache_mode')
    ),
    true
);

-- name: snapshot_presets
-- Presets that want prebuilds, on every version of the templates (active or not), with the
-- context the planner needs to tell active from inactive.
--
-- last_invalidated_at is optional (Coder's migration 000399, first released in v2.29.0), so
-- it is named without a table qualifier and resolved by scope: PostgreSQL looks a column name
-- up in the innermost query level first and moves outward only when no relation there has
-- it. Inside `s`, only `p` can have the column (templates, organizations and versions have
-- none of that name): on a newer Coder it is p's; on an older one the name falls through to
-- `absent`, the one-row NULL of the enclosing level. No whole-row reference (to_jsonb(p)),
-- so the service role needs SELECT on that column only, and the planner flattens `s` into
-- the same plan as before (its ORDER BY sits outside for that reason).
SELECT
    s.id,
    s.name,
    s.template_id,
    s.template_name,
    s.organization_id,
    s.organization_name,
    s.template_version_id,
    s.template_version_name,
    s.using_active_version,
    s.template_deleted,
    s.template_deprecated,
    s.desired_instances,
    s.invalidate_after_secs,
    s.last_invalidated_at,
    s.scheduling_timezone,
    s.prebuild_status
FROM (VALUES (NULL::timestamptz)) AS absent (last_invalidated_at)
CROSS JOIN LATERAL (
    SELECT
        p.id,
        p.name,
        t.id AS template_id,
        t.name AS template_name,
        o.id AS organization_id,
        o.name AS organization_name,
        v.id AS template_version_id,
        v.name AS template_version_name,
        v.created_at AS template_version_created_at,
        t.active_version_id = v.id AS using_active_version,
        t.deleted AS template_deleted,
        t.deprecated <> '' AS template_deprecated,
        p.desired_instances,
        p.invalidate_after_secs,
        last_invalidated_at,
        p.scheduling_timezone,
        p.prebuild_status
    FROM templates AS t
    JOIN organizations AS o ON o.id = t.organization_id
    JOIN template_versions AS v ON v.template_id = t.id
    JOIN template_version_presets AS p ON p.template_version_id = v.id
    WHERE t.id = ANY(%(template_ids)s::uuid[])
      AND p.desired_instances IS NOT NULL
) AS s
ORDER BY s.template_id, s.template_version_created_at, s.template_version_id, s.name, s.id;

-- name: snapshot_schedules
-- Schedules of the presets above. Starts from the templates, as snapshot_presets does (a
-- version's template always exists): from the versions alone, the generic plan the store asks
-- for hashes the whole presets table, a few milliseconds per reconcile in a big fleet.
SELECT s.preset_id, s.id, s.cron_expression, s.desired_instances
FROM templates AS t
JOIN template_versions AS v ON v.template_id = t.id
JOIN template_version_presets AS p ON p.template_version_id = v.id
JOIN template_version_preset_prebuild_schedules AS s ON s.preset_id = p.id
WHERE t.id = ANY(%(template_ids)s::uuid[])
  AND p.desired_instances IS NOT NULL
ORDER BY s.preset_id, s.id;

-- name: snapshot_build_inputs
-- What Coder's workspace builder checks before it queues a prebuild's first build, for the
-- presets that can get one (prebuildd.parameters, prebuildd.workspace_tags): one row per
-- template of the batch whose active version is live, with that version's
--   parameters       its template_version_parameters in Coder's order (display_order, then
--                    lower(name)), each a JSON array: name, display_name, type, form_type,
--                    required, default_value, options (as stored: objects with a "value"),
--                    validation_regex, validation_min, validation_max, validation_error,
--                    validation_monotonic;
--   workspace_tags   its template_version_workspace_tags, key -> stored value expression;
--   preset_values    per preset that wants prebuilds, preset id -> {name: value}.
-- Retired versions are never created for, so nothing of theirs is read. Every lookup is an
-- index probe by version or preset (Coder's unique (template_version_id, name/key) indexes,
-- prebuildd_presets_template_version, prebuildd_preset_parameters_preset); aggregated here so
-- that a template costs one row whatever its number of parameters and presets.
SELECT
    v.id AS template_version_id,
    COALESCE(
        (
            SELECT jsonb_agg(
                jsonb_build_array(
                    tvp.name, tvp.display_name, tvp.type, tvp.form_type::text, tvp.required,
                    tvp.default_value, tvp.options, tvp.validation_regex, tvp.validation_min,
                    tvp.validation_max, tvp.validation_error, tvp.validation_monotonic
                )
                ORDER BY tvp.display_order, lower(tvp.name)
            )
            FROM template_version_parameters AS tvp
            WHERE tvp.template_version_id = v.id
        ),
        '[]'::jsonb
    ) AS parameters,
    COALESCE(
        (
            SELECT jsonb_object_agg(wt.key, wt.value)
            FROM template_version_workspace_tags AS wt
            WHERE wt.template_version_id = v.id
        ),
        '{}'::jsonb
    ) AS workspace_tags,
    COALESCE(
        (
            SELECT jsonb_object_agg(
                p.id::text,
                (
                    SELECT COALESCE(jsonb_object_agg(pp.name, pp.value), '{}'::jsonb)
                    FROM template_version_preset_parameters AS pp
                    WHERE pp.template_version_preset_id = p.id
                )
            )
            FROM template_version_presets AS p
            WHERE p.template_version_id = v.id
              AND p.desired_instances IS NOT NULL
        ),
        '{}'::jsonb
    ) AS preset_values
FROM templates AS t
JOIN template_versions AS v ON v.id = t.active_version_id
WHERE t.id = ANY(%(template_ids)s::uuid[])
  AND NOT t.deleted
  AND t.deprecated = '';

-- name: snapshot_prebuilds
-- Everything the planner needs to know about the templates' live prebuilds, in one statement.
-- Four of the planner's inputs (running prebuilds, in-progress counts, cancelable pending
-- jobs, recent build outcomes and failures) are all facts about "the latest build of each
-- live prebuild workspace". That set is computed once (`live`), from the prebuilds user's
-- workspaces of the templates, then each concern is one branch of the UNION below, tagged by
-- `kind`. Columns a kind does not use are NULL.
--
--   running       one row per prebuild whose latest build is a succeeded `start`; `ready`
--                 when every top-level, non-deleted agent of that build is ready (no agent:
--                 not ready). `created_at` is the workspace's (what TTL expiry measures).
--   in_progress   per preset and transition: latest prebuild builds on the active version
--                 whose job is pending or running.
--   cancelable    per preset: never-built prebuilds of a retired version (not active, or
--                 of a deleted or deprecated template) whose first `start` job is still
--                 queued (pending, no worker, neither canceled nor done).
--   recent        per preset, newest first: the latest build of each prebuild whose latest
--                 build is a `start` on the active version, with its job status; at least
--                 max(desired, any scheduled desired, %(hard_limit)s) of them when they exist,
--                 and only when one of those failed within the lookback or the newest failed
--                 (nothing else can back off or reach the hard limit: `actionable`). (Backoff
--                 and the hard limit only apply to active presets, as in Coder.)
--   failures      per preset: how many of its latest starts on the active version failed
--                 within %(backoff_lookback)s before now() (the database's clock, like every
--                 instant the planner compares).
--
-- A window function bounds `recent` rather than a LATERAL ... LIMIT per preset: a preset's
-- builds can only be found through its workspaces, so a per-preset LATERAL would rescan
-- `live` once per preset; one sort serves a single template and a 200-template batch alike.
WITH live AS MATERIALIZED (
    SELECT
        w.id AS workspace_id,
        w.name,
        w.created_at AS workspace_created_at,
        lb.id AS build_id,
        lb.build_number,
        lb.transition,
        lb.initiator_id,
        lb.template_version_id,
        lb.created_at AS build_created_at,
        lb.job_id,
        -- A build without a preset (say, an admin's stop) keeps the preset of the newest
        -- build that had one. COALESCE evaluates the fallback only when it is needed.
        COALESCE(
            lb.template_version_preset_id,
            (
                SELECT pb.template_version_preset_id
                FROM workspace_builds AS pb
                WHERE pb.workspace_id = w.id
                  AND pb.template_version_preset_id IS NOT NULL
                ORDER BY pb.build_number DESC
                LIMIT 1
            )
        ) AS preset_id,
        lb.template_version_id = t.active_version_id AS on_active_version,
        -- Prebuilds are maintained only for the active version of a live, non-deprecated
        -- template; anything else is retired (its queued jobs canceled).
        (lb.template_version_id <> t.active_version_id OR t.deleted OR t.deprecated <> '')
            AS retired,
        j.job_status,
        j.worker_id,
        j.canceled_at,
        j.completed_at
    FROM workspaces AS w
    CROSS JOIN LATERAL (
        SELECT
            b.id, b.build_number, b.transition, b.initiator_id, b.template_version_id,
            b.created_at, b.job_id, b.template_version_preset_id
        FROM workspace_builds AS b
        WHERE b.workspace_id = w.id
        ORDER BY b.build_number DESC
        LIMIT 1
    ) AS lb
    JOIN provisioner_jobs AS j ON j.id = lb.job_id
    -- The workspace's template, looked up by key (memoized: one probe per template). As a
    -- plain join the planner, expecting few templates, would start from them and walk each
    -- one's workspaces of every owner through Coder's template index (4-5x the rows) instead
    -- of reading the prebuilds' workspaces through prebuildd_workspaces_template_owner; as a
    -- hash join it would read every template. OFFSET 0 keeps the subquery a lookup.
    CROSS JOIN LATERAL (
        SELECT tp.active_version_id, tp.deleted, tp.deprecated
        FROM templates AS tp
        WHERE tp.id = w.template_id
        OFFSET 0
    ) AS t
    WHERE w.template_id = ANY(%(template_ids)s::uuid[])
      AND w.owner_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
      AND NOT w.deleted
),
-- The latest start of each prebuild of an active version (what backoff and the hard limit
-- read), and, once per preset, how many of them `recent` returns. Both reach `latest_starts`
-- through one window over their UNION, never through a join of two CTE scans: such a join
-- is a nested loop over presets x builds whenever the planner underestimates the CTEs
-- (always, under generic plans), harmless for one template and quadratic for a batch.
starts AS (
    SELECT l.preset_id, l.build_id, l.build_created_at, l.job_status
    FROM live AS l
    WHERE l.transition = 'start'
      AND l.on_active_version
      AND l.preset_id IS NOT NULL
),
bounds AS (
    -- One index probe per preset (not per build): its own count, its largest scheduled
    -- count and the hard limit, whichever is largest. Only for the presets `recent` may
    -- return rows for: a failure within the lookback, or a failed build at the newest
    -- instant (a superset of `actionable` below); the others' rows get no bound (a NULL
    -- `wanted`, so `recent` leaves them out, as `actionable` would) and cost no probe.
    SELECT
        p.id AS preset_id,
        GREATEST(p.desired_instances, sb.scheduled, %(hard_limit)s::int, 1) AS wanted
    FROM (
        SELECT st.preset_id
        FROM starts AS st
        GROUP BY st.preset_id
        HAVING bool_or(
                st.job_status = 'failed'
                AND st.build_created_at >= now() - make_interval(
                    secs => extract(epoch FROM %(backoff_lookback)s::interval)
                )
            )
            OR (
                %(hard_limit)s::int > 0
                AND max(st.build_created_at) FILTER (WHERE st.job_status = 'failed')
                    = max(st.build_created_at)
            )
    ) AS d
    JOIN template_version_presets AS p ON p.id = d.preset_id
    CROSS JOIN LATERAL (
        SELECT max(s.desired_instances) AS scheduled
        FROM template_version_preset_prebuild_schedules AS s
        WHERE s.preset_id = p.id
    ) AS sb
),
latest_starts AS (
    SELECT
        r.preset_id, r.build_created_at, r.job_status, r.newest_rank, r.wanted,
        -- Whether the planner could act on any build `recent` returns for the preset: one
        -- that failed within the lookback (backoff: plan.verdicts.backoff looks for nothing
        -- else), or a failed newest build (the hard limit needs the latest all failed, the
        -- newest first). When there is none, `recent` leaves the preset out: the plan is the
        -- same from no rows, and in a steady fleet that is most presets (a failure hours old
        -- among the latest builds is common). The lookback is measured as the planner
        -- measures it, in absolute seconds (an interval's days would be calendar days here).
        -- A window over the rank's partition, so no second sort.
        bool_or(
            r.job_status = 'failed'
            AND r.newest_rank <= r.wanted
            AND (
                r.build_created_at >= now() - make_interval(
                    secs => extract(epoch FROM %(backoff_lookback)s::interval)
                )
                OR (%(hard_limit)s::int > 0 AND r.build_created_at = r.newest_at)
            )
        ) OVER (PARTITION BY r.preset_id) AS actionable
    FROM (
        SELECT
            u.preset_id,
            u.build_id,
            u.build_created_at,
            u.job_status,
            -- A bound row has no build: it sorts after every build of its preset, so the
            -- builds' ranks are as if it were not there.
            row_number() OVER (
                PARTITION BY u.preset_id
                ORDER BY u.build_created_at DESC NULLS LAST, u.build_id
            ) AS newest_rank,
            max(u.wanted) OVER (PARTITION BY u.preset_id) AS wanted,
            max(u.build_created_at) OVER (PARTITION BY u.preset_id) AS newest_at
        FROM (
            SELECT st.preset_id, st.build_id, st.build_created_at, st.job_status,
                   NULL::int AS wanted
            FROM starts AS st
            -- Without a bound nothing can be `actionable`: a one-time test (an InitPlan)
            -- that skips reading, sorting and ranking the batch's builds -- every batch
            -- of a healthy fleet. `failures` below reads `starts` itself for that reason.
            WHERE EXISTS (SELECT FROM bounds)
            UNION ALL
            SELECT b.preset_id, NULL, NULL, NULL, b.wanted
            FROM bounds AS b
        ) AS u
    ) AS r
    WHERE r.build_id IS NOT NULL
)
SELECT
    'running' AS kind,
    l.preset_id,
    l.workspace_id,
    l.name::text AS name,
    l.template_version_id,
    l.workspace_created_at AS created_at,
    COALESCE(
        (
            SELECT bool_and(a.lifecycle_state = 'ready')
            FROM workspace_resources AS r
            JOIN workspace_agents AS a ON a.resource_id = r.id
            WHERE r.job_id = l.job_id
              AND a.parent_id IS NULL
              AND NOT a.deleted
        ),
        false
    ) AS ready,
    NULL::workspace_transition AS transition,
    NULL::provisioner_job_status AS job_status,
    NULL::bigint AS n
FROM live AS l
WHERE l.transition = 'start'
  AND l.job_status = 'succeeded'
  AND l.preset_id IS NOT NULL

UNION ALL

SELECT
    'in_progress', l.preset_id, NULL, NULL, NULL, NULL, NULL, l.transition, NULL, count(*)
FROM live AS l
WHERE l.job_status IN ('pending', 'running')
  AND l.on_active_version
  AND l.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
  AND l.preset_id IS NOT NULL
GROUP BY l.preset_id, l.transition

UNION ALL

SELECT
    'cancelable', l.preset_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, count(*)
FROM live AS l
WHERE l.retired
  AND l.build_number = 1
  AND l.transition = 'start'
  AND l.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
  AND l.job_status = 'pending'
  AND l.worker_id IS NULL
  AND l.canceled_at IS NULL
  AND l.completed_at IS NULL
  AND l.preset_id IS NOT NULL
GROUP BY l.preset_id

UNION ALL

SELECT
    'recent', ls.preset_id, NULL, NULL, NULL, ls.build_created_at, NULL, NULL, ls.job_status,
    ls.newest_rank
FROM latest_starts AS ls
WHERE ls.newest_rank <= ls.wanted
  AND ls.actionable

UNION ALL

SELECT
    'failures', st.preset_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, count(*)
FROM starts AS st
WHERE st.job_status = 'failed'
  AND st.build_created_at >= now() - %(backoff_lookback)s::interval
GROUP BY st.preset_id;

-- name: prebuild_metrics
-- Lifetime totals per preset, with Coder's meaning: every first build started by the
-- prebuilds user is a created prebuild; failed when that build's job failed; claimed when the
-- workspace now belongs to someone else. Live templates only. A global read by nature (it
-- feeds counters for every preset); served by idx_workspace_builds_initiator_id.
SELECT
    p.id AS preset_id,
    t.name::text AS template_name,
    p.name AS preset_name,
    o.name AS organization_name,
    count(*) AS created_total,
    count(*) FILTER (WHERE j.job_status = 'failed') AS failed_total,
    count(*) FILTER (
        WHERE w.owner_id <> 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
    ) AS claimed_total
FROM workspace_builds AS b
JOIN workspaces AS w ON w.id = b.workspace_id
JOIN templates AS t ON t.id = w.template_id
JOIN organizations AS o ON o.id = w.organization_id
JOIN template_version_presets AS p ON p.id = b.template_version_preset_id
JOIN provisioner_jobs AS j ON j.id = b.job_id
WHERE b.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
  AND b.build_number = 1
  AND NOT t.deleted
GROUP BY p.id, t.name, p.name, o.name
ORDER BY t.name, p.name, o.name, p.id;
