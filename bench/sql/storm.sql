-- bench/storm.py: a burst of prebuild job status changes, and what the service does with it.

-- name: storm_jobs
-- Finished jobs of prebuild builds that no longer decide anything: builds of deleted prebuilds
-- and the prebuilds user's first build of workspaces claimed since. prebuildd's job_status
-- trigger reports each of their status changes (the build was started by the prebuilds
-- user), and the planner's state does not depend on them (it reads live prebuilds only), so
-- the storm exercises the event path -- listener, queue, reconciles, connections -- without
-- the reconciles' own writes echoing back as more events.
SELECT j.id, w.template_id
FROM unnest(%(template_ids)s::uuid[]) AS t (id)
JOIN workspaces AS w ON w.template_id = t.id
JOIN workspace_builds AS b ON b.workspace_id = w.id
JOIN provisioner_jobs AS j ON j.id = b.job_id
WHERE b.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
  AND (w.deleted OR w.owner_id <> 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid)
  AND j.completed_at IS NOT NULL
ORDER BY w.template_id, j.id;

-- name: storm_flip_jobs
-- One real status change per job: succeeded <-> failed (job_status is generated from error).
UPDATE provisioner_jobs
SET error = CASE WHEN COALESCE(error, '') = '' THEN 'bench storm' ELSE NULL END,
    updated_at = now()
WHERE id = ANY(%(job_ids)s::uuid[]);

-- name: storm_service_connections
-- The service's connections right now: its pool (all, and those not idle) and its listener.
SELECT
    count(*) FILTER (WHERE application_name = 'prebuildd'),
    count(*) FILTER (WHERE application_name = 'prebuildd' AND state <> 'idle'),
    count(*) FILTER (WHERE application_name = 'prebuildd-listener')
FROM pg_catalog.pg_stat_activity
WHERE datname = current_database();

-- name: storm_listen
LISTEN prebuildd_events;
