-- Demand for prebuilds, derived from Coder's own rows (issue 16; SPEC section 9), and the
-- autoscale policies that size pools from it. Reads only: nothing here writes on Coder's paths.
--
-- Definitions (one place, shared by the forecast, `status` and the metrics):
--
--   hit   a claim: a prebuild handed to a person. Its time is the claim build's created_at.
--         The claim build is the first build of a workspace, after build 1, initiated by the
--         workspace's owner, where build 1 was the prebuilds user's and the owner is a person
--         now. (Coder's claim and `prebuildd claim` queue that build in the transaction that
--         changes the owner, naming the claimed preset.) An admin's build of an unclaimed
--         prebuild, the owner's later builds and the prebuilds user's own builds (creates,
--         deletes) are not claims.
--   miss  a person's new workspace that was built from scratch although its preset keeps a
--         pool: build 1, `start`, not initiated by the prebuilds user, naming a preset that
--         has desired_instances. Its time is that build's created_at.
--
-- Both count whether or not the workspace still exists (a claimed workspace deleted since was
-- still a claim) and attach to the preset the build names (a claim build names the claimed
-- preset). They are found through the builds naming a preset, by preset and time
-- (prebuildd_workspace_builds_preset_created and, for first builds only,
-- prebuildd_workspace_builds_first_preset: sql/schema/0008_demand_index.sql), starting from
-- the templates' presets: every read is narrowed by template and window, except the lifetime
-- totals of the metrics, which read first builds only.

-- name: snapshot_policies
-- The autoscale policies in force for the templates being reconciled (`off` is the same as no
-- policy). A primary-key range scan per template; part of every reconcile's pipeline.
SELECT a.template_id, a.preset_name, a.mode, a.min_instances, a.max_instances
FROM prebuildd.autoscale_policies AS a
WHERE a.template_id = ANY(%(template_ids)s::uuid[])
  AND a.mode <> 'off'
ORDER BY a.template_id, a.preset_name;

-- name: demand_events
-- Hits and misses of the templates' presets (every version's) created in
-- [%(window_since)s, %(window_end_at)s), per preset and hour of the week (0 = Monday
-- 00:00-00:59 UTC). With %(policies_only)s, only presets whose (template, name) has a policy
-- in force: the forecast reads 14 days of those once per template and hour
-- (prebuildd.demand.HistoryCache); `status` reads 24 hours of all of them.
--
-- `builds` is every build by someone other than the prebuilds user that names one of the
-- presets in the window: one index range per preset. Misses are its first builds; a hit
-- needs two probes of the workspace's builds (workspace_builds_workspace_id_build_number_key):
-- build 1 was the prebuilds user's, and no earlier build after it was the owner's.
WITH presets AS MATERIALIZED (
    SELECT v.template_id, p.name AS preset_name, p.id AS preset_id
    FROM template_versions AS v
    JOIN template_version_presets AS p ON p.template_version_id = v.id
    WHERE v.template_id = ANY(%(template_ids)s::uuid[])
      AND p.desired_instances IS NOT NULL
      AND (
          NOT %(policies_only)s::boolean
          OR EXISTS (
              SELECT 1
              FROM prebuildd.autoscale_policies AS a
              WHERE a.template_id = v.template_id
                AND a.preset_name = p.name
                AND a.mode <> 'off'
          )
      )
),
builds AS MATERIALIZED (
    SELECT
        pr.template_id, pr.preset_name, pr.preset_id,
        b.workspace_id, b.build_number, b.transition, b.initiator_id, b.created_at
    FROM presets AS pr
    JOIN workspace_builds AS b ON b.template_version_preset_id = pr.preset_id
    WHERE b.created_at >= %(window_since)s::timestamptz
      AND b.created_at < %(window_end_at)s::timestamptz
      AND b.initiator_id <> 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
),
events AS (
    SELECT bl.template_id, bl.preset_name, bl.preset_id, bl.created_at, 0 AS hit, 1 AS miss
    FROM builds AS bl
    WHERE bl.build_number = 1
      AND bl.transition = 'start'

    UNION ALL

    SELECT bl.template_id, bl.preset_name, bl.preset_id, bl.created_at, 1, 0
    FROM builds AS bl
    JOIN workspaces AS w ON w.id = bl.workspace_id
    WHERE bl.build_number > 1
      AND w.owner_id = bl.initiator_id
      AND EXISTS (
          SELECT 1
          FROM workspace_builds AS f
          WHERE f.workspace_id = bl.workspace_id
            AND f.build_number = 1
            AND f.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
      )
      AND NOT EXISTS (
          SELECT 1
          FROM workspace_builds AS e
          WHERE e.workspace_id = bl.workspace_id
            AND e.build_number > 1
            AND e.build_number < bl.build_number
            AND e.initiator_id = bl.initiator_id
      )
)
SELECT
    ev.template_id,
    ev.preset_name,
    ev.preset_id,
    ((extract(isodow FROM ev.created_at AT TIME ZONE 'UTC')::int - 1) * 24
        + extract(hour FROM ev.created_at AT TIME ZONE 'UTC')::int) AS hour_of_week,
    sum(ev.hit)::bigint AS hits,
    sum(ev.miss)::bigint AS misses
FROM events AS ev
GROUP BY ev.template_id, ev.preset_name, ev.preset_id, hour_of_week
ORDER BY ev.template_id, ev.preset_name, ev.preset_id, hour_of_week;

-- name: demand_refill
-- What else the forecast needs per (template, preset name) with a policy in force:
--   first_version_at  when the oldest version with a preset of that name was created (a
--                     younger name has less history: fewer hours to average over);
--   refill_seconds    the median time from queueing a prebuild's create (build 1 by the
--                     prebuilds user) to its job's success, over the latest 20 successful
--                     creates in [%(window_since)s, %(window_end_at)s); NULL without one.
-- Same index ranges as demand_events (creates are builds naming the preset).
WITH presets AS MATERIALIZED (
    SELECT a.template_id, a.preset_name, p.id AS preset_id, v.created_at AS version_created_at
    FROM prebuildd.autoscale_policies AS a
    JOIN template_versions AS v ON v.template_id = a.template_id
    JOIN template_version_presets AS p
        ON p.template_version_id = v.id
       AND p.name = a.preset_name
    WHERE a.template_id = ANY(%(template_ids)s::uuid[])
      AND a.mode <> 'off'
      AND p.desired_instances IS NOT NULL
),
creates AS (
    SELECT
        pr.template_id,
        pr.preset_name,
        extract(epoch FROM j.completed_at - b.created_at)::float8 AS seconds,
        row_number() OVER (
            PARTITION BY pr.template_id, pr.preset_name
            ORDER BY b.created_at DESC, b.id
        ) AS newest
    FROM presets AS pr
    JOIN workspace_builds AS b ON b.template_version_preset_id = pr.preset_id
    JOIN provisioner_jobs AS j ON j.id = b.job_id
    WHERE b.created_at >= %(window_since)s::timestamptz
      AND b.created_at < %(window_end_at)s::timestamptz
      AND b.build_number = 1
      AND b.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
      AND j.job_status = 'succeeded'
),
refill AS (
    SELECT
        c.template_id,
        c.preset_name,
        percentile_cont(0.5) WITHIN GROUP (ORDER BY c.seconds) AS refill_seconds,
        count(*) AS samples
    FROM creates AS c
    WHERE c.newest <= 20
    GROUP BY c.template_id, c.preset_name
)
SELECT
    n.template_id,
    n.preset_name,
    n.first_version_at,
    r.refill_seconds,
    COALESCE(r.samples, 0) AS samples
FROM (
    SELECT pr.template_id, pr.preset_name, min(pr.version_created_at) AS first_version_at
    FROM presets AS pr
    GROUP BY pr.template_id, pr.preset_name
) AS n
LEFT JOIN refill AS r
    ON r.template_id = n.template_id
   AND r.preset_name = n.preset_name
ORDER BY n.template_id, n.preset_name;

-- name: demand_totals
-- Lifetime totals per preset of the active version of a live template (the presets the
-- per-preset series show), for the metrics beside Coder's created/failed/claimed totals:
--   misses_total         every miss of the preset;
--   claims_measured      claims whose time saved is measurable: the prebuild's create and the
--                        claim build both succeeded (and nobody else built the prebuild
--                        before it was claimed);
--   saved_seconds_total  over those claims, the time a person did not wait: the prebuild's
--                        create (queued to done: what a miss waits for) minus the claim build
--                        (queued to done: what the person waited for), never below 0.
-- A global read by nature, like prebuild_metrics, run by the metrics refresh (every 15 s), so
-- it starts from first builds only (prebuildd_workspace_builds_first_preset: one index range
-- per active preset over its creates and misses, whatever the number of later builds of
-- people's workspaces): a miss is a first build; a claim is a create whose workspace a person
-- owns now, and its claim build is found by the workspace's build numbers.
WITH presets AS MATERIALIZED (
    SELECT p.id AS preset_id
    FROM templates AS t
    JOIN template_version_presets AS p ON p.template_version_id = t.active_version_id
    WHERE NOT t.deleted
      AND p.desired_instances IS NOT NULL
),
firsts AS MATERIALIZED (
    SELECT pr.preset_id, f.workspace_id, f.transition, f.initiator_id, f.created_at, f.job_id
    FROM presets AS pr
    JOIN workspace_builds AS f
        ON f.template_version_preset_id = pr.preset_id
       AND f.build_number = 1
),
misses AS (
    SELECT fi.preset_id, count(*) AS misses_total
    FROM firsts AS fi
    WHERE fi.initiator_id <> 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
      AND fi.transition = 'start'
    GROUP BY fi.preset_id
),
claims AS (
    SELECT
        fi.preset_id,
        count(*) AS claims_measured,
        sum(GREATEST(
            extract(epoch FROM (fj.completed_at - fi.created_at) - (cj.completed_at - cb.created_at)),
            0
        ))::float8 AS saved_seconds_total
    FROM firsts AS fi
    -- The first build of someone else after the prebuild's own: the claim build when its
    -- initiator owns the workspace now. (Read in build order from the workspace's unique
    -- index and stopped at the first: most prebuilds have no such build, claimed ones have
    -- it next. A claim preceded by an admin's build of the unclaimed prebuild is not
    -- measured: rare, and its time saved is muddled anyway.)
    CROSS JOIN LATERAL (
        SELECT c.created_at, c.job_id, c.template_version_preset_id, c.initiator_id
        FROM workspace_builds AS c
        WHERE c.workspace_id = fi.workspace_id
          AND c.build_number > 1
          AND c.initiator_id <> 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
        ORDER BY c.build_number
        LIMIT 1
    ) AS cb
    JOIN workspaces AS w ON w.id = fi.workspace_id
    JOIN provisioner_jobs AS fj ON fj.id = fi.job_id
    JOIN provisioner_jobs AS cj ON cj.id = cb.job_id
    WHERE fi.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
      AND w.owner_id = cb.initiator_id
      AND cb.template_version_preset_id = fi.preset_id
      AND fj.job_status = 'succeeded'
      AND cj.job_status = 'succeeded'
    GROUP BY fi.preset_id
)
SELECT
    pr.preset_id,
    COALESCE(m.misses_total, 0) AS misses_total,
    COALESCE(c.claims_measured, 0) AS claims_measured,
    COALESCE(c.saved_seconds_total, 0)::float8 AS saved_seconds_total
FROM presets AS pr
LEFT JOIN misses AS m ON m.preset_id = pr.preset_id
LEFT JOIN claims AS c ON c.preset_id = pr.preset_id
ORDER BY pr.preset_id;

-- name: autoscale_set
-- `prebuildd autoscale set`: store (or replace) the policy of the preset's (template, name)
-- through the checking function (sql/functions/autoscale.sql); 22023 on bad input.
SELECT s.policy_template_id, s.policy_preset_name
FROM prebuildd.set_autoscale_policy(
    %(preset_id)s::uuid, %(mode)s::text, %(min_instances)s::int, %(max_instances)s::int
) AS s;

-- name: autoscale_list
-- `prebuildd autoscale list`: every policy, with its template's name and the preset of that
-- name on the active version (its id and configured count), when they exist.
SELECT
    a.template_id,
    t.name::text AS template_name,
    a.preset_name,
    p.id AS active_preset_id,
    p.desired_instances,
    a.mode,
    a.min_instances,
    a.max_instances,
    a.updated_at,
    COALESCE(t.deleted, true) AS template_gone
FROM prebuildd.autoscale_policies AS a
LEFT JOIN templates AS t ON t.id = a.template_id
LEFT JOIN template_version_presets AS p
    ON p.template_version_id = t.active_version_id
   AND p.name = a.preset_name
ORDER BY t.name, a.preset_name, a.template_id;
