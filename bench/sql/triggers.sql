-- Coder's hot-path writes, as its provisioner daemons and agents make them (one row per
-- statement, each its own transaction), and the checks around them, for
-- bench/trigger_overhead.py.

-- name: listen_events
LISTEN prebuildd_events;

-- name: send_sentinel
-- Sent by the listener after a slice: notifications arrive in commit order, so everything the
-- slice's commits sent has arrived once this one has.
SELECT pg_notify('prebuildd_events', %(token)s);

-- name: event_triggers
-- prebuildd's triggers on this database's tables: (name, table, enabled, has a WHEN clause,
-- has an UPDATE OF column list). The positive control of the bench.
SELECT t.tgname, c.relname, t.tgenabled <> 'D', t.tgqual IS NOT NULL,
       t.tgattr <> ''::int2vector
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
WHERE NOT t.tgisinternal
  AND t.tgname LIKE 'prebuildd\_%'
ORDER BY 1, 2;

-- name: max_connections
SELECT current_setting('max_connections')::int
     - current_setting('superuser_reserved_connections')::int;

-- name: pick_prebuild_jobs
-- Jobs of builds the prebuilds user started (status runs reset them to pending first).
SELECT j.id
FROM provisioner_jobs AS j
JOIN workspace_builds AS b ON b.job_id = j.id
WHERE b.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
ORDER BY j.id
LIMIT %(limit)s;

-- name: pick_prebuild_active_starts
-- Jobs of prebuilds' start builds of their template's active version: the realistic lifecycle
-- of a prebuild's job (a create; its success is not announced).
SELECT j.id
FROM provisioner_jobs AS j
JOIN workspace_builds AS b ON b.job_id = j.id
JOIN workspaces AS w ON w.id = b.workspace_id
JOIN templates AS t ON t.id = w.template_id
WHERE b.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
  AND b.transition = 'start'
  AND b.template_version_id = t.active_version_id
ORDER BY j.id
LIMIT %(limit)s;

-- name: pick_control_job
-- One create outside every pick above (the picks take the lowest job ids, this the highest):
-- the positive control's job.
SELECT j.id
FROM provisioner_jobs AS j
JOIN workspace_builds AS b ON b.job_id = j.id
JOIN workspaces AS w ON w.id = b.workspace_id
JOIN templates AS t ON t.id = w.template_id
WHERE b.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
  AND b.transition = 'start'
  AND b.template_version_id = t.active_version_id
ORDER BY j.id DESC
LIMIT 1;

-- name: control_reset
-- The positive control after every slice, untimed, on a side with triggers: the control job
-- back to pending and then failed, in one transaction, sends exactly one notification.
UPDATE provisioner_jobs
SET started_at = NULL, completed_at = NULL, canceled_at = NULL, error = NULL
WHERE id = %(id)s::uuid;

-- name: control_fail
UPDATE provisioner_jobs
SET completed_at = now(), error = 'bench: control'
WHERE id = %(id)s::uuid;

-- name: pick_user_jobs
-- Jobs of the latest builds of ordinary user workspaces (never prebuilds).
SELECT j.id
FROM workspaces AS w
CROSS JOIN LATERAL (
    SELECT b.job_id
    FROM workspace_builds AS b
    WHERE b.workspace_id = w.id
    ORDER BY b.build_number DESC
    LIMIT 1
) AS lb
JOIN provisioner_jobs AS j ON j.id = lb.job_id
WHERE w.owner_id <> 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
  AND NOT w.deleted
  AND NOT EXISTS (
      SELECT 1
      FROM workspace_builds AS first
      WHERE first.workspace_id = w.id
        AND first.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
  )
ORDER BY j.id
LIMIT %(limit)s;

-- name: pick_prebuild_agents
SELECT a.id
FROM workspaces AS w
JOIN workspace_builds AS b ON b.workspace_id = w.id
JOIN workspace_resources AS r ON r.job_id = b.job_id
JOIN workspace_agents AS a ON a.resource_id = r.id
WHERE w.owner_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
  AND NOT w.deleted
ORDER BY a.id
LIMIT %(limit)s;

-- name: reset_jobs_pending
-- Back to queued, so that the next round makes the same transitions (untimed).
UPDATE provisioner_jobs
SET started_at = NULL, completed_at = NULL, canceled_at = NULL, error = NULL,
    worker_id = NULL, updated_at = now()
WHERE id = ANY(%(ids)s::uuid[]);

-- name: job_acquired
-- A provisioner daemon picks the job up: pending -> running.
UPDATE provisioner_jobs
SET started_at = now(), updated_at = now(), worker_id = %(worker_id)s::uuid
WHERE id = %(id)s::uuid;

-- name: job_completed
-- The daemon reports success: running -> succeeded (Coder writes error and error_code too).
UPDATE provisioner_jobs
SET completed_at = now(), updated_at = now(), error = NULL, error_code = NULL
WHERE id = %(id)s::uuid;

-- name: job_failed
-- The daemon reports a failure: running -> failed (announced).
UPDATE provisioner_jobs
SET completed_at = now(), updated_at = now(), error = 'bench: terraform apply failed',
    error_code = NULL
WHERE id = %(id)s::uuid;

-- name: job_heartbeat
-- While a job runs, its daemon bumps updated_at every few seconds; nothing else changes.
UPDATE provisioner_jobs
SET updated_at = now()
WHERE id = %(id)s::uuid;

-- name: agent_connection
-- An agent's connection bookkeeping, as coderd writes it while the agent stays connected
-- (no lifecycle change).
UPDATE workspace_agents
SET first_connected_at = COALESCE(first_connected_at, now()),
    last_connected_at = now(),
    disconnected_at = NULL,
    last_connected_replica_id = %(worker_id)s::uuid,
    updated_at = now()
WHERE id = %(id)s::uuid;

-- name: set_synchronous_commit
-- Per session: 'on' is Coder's (and PostgreSQL's) default; 'off' makes commits CPU-bound,
-- the worst case for any per-commit overhead such as NOTIFY.
SELECT set_config('synchronous_commit', %(mode)s, false);

-- ---------------------------------------------------------------------------------------------
-- Server cost per write, without a client: the same writes from a procedure on the server, one
-- transaction per write (COMMIT in the loop), so that per-transaction costs (a trigger
-- function's set-up, its subtransaction, NOTIFY at commit) are all there and nothing else
-- varies. Created on the bench's clones only, in their public schema.
-- ---------------------------------------------------------------------------------------------

-- name: create_write_loops
CREATE OR REPLACE PROCEDURE bench_heartbeat_loop(ids uuid[])
LANGUAGE plpgsql
AS $loop$
DECLARE
    row_id uuid;
BEGIN
    FOREACH row_id IN ARRAY ids LOOP
        UPDATE provisioner_jobs SET updated_at = now() WHERE id = row_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'bench: no job %', row_id;
        END IF;
        COMMIT;
    END LOOP;
END
$loop$;

CREATE OR REPLACE PROCEDURE bench_agent_connection_loop(ids uuid[], replica uuid)
LANGUAGE plpgsql
AS $loop$
DECLARE
    row_id uuid;
BEGIN
    FOREACH row_id IN ARRAY ids LOOP
        UPDATE workspace_agents
        SET first_connected_at = COALESCE(first_connected_at, now()),
            last_connected_at = now(),
            disconnected_at = NULL,
            last_connected_replica_id = replica,
            updated_at = now()
        WHERE id = row_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'bench: no agent %', row_id;
        END IF;
        COMMIT;
    END LOOP;
END
$loop$;

-- A job's lifecycle: acquired, then finished -- succeeded when `failure` is NULL, failed with
-- that error otherwise (Coder's job_status is computed from `error`).
CREATE OR REPLACE PROCEDURE bench_job_status_loop(ids uuid[], worker uuid, failure text)
LANGUAGE plpgsql
AS $loop$
DECLARE
    row_id uuid;
BEGIN
    FOREACH row_id IN ARRAY ids LOOP
        UPDATE provisioner_jobs
        SET started_at = now(), updated_at = now(), worker_id = worker
        WHERE id = row_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'bench: no job %', row_id;
        END IF;
        COMMIT;
        UPDATE provisioner_jobs
        SET completed_at = now(), updated_at = now(), error = failure, error_code = NULL
        WHERE id = row_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'bench: no job %', row_id;
        END IF;
        COMMIT;
    END LOOP;
END
$loop$;

-- name: heartbeat_loop
CALL bench_heartbeat_loop(%(ids)s::uuid[]);

-- name: agent_connection_loop
CALL bench_agent_connection_loop(%(ids)s::uuid[], %(worker_id)s::uuid);

-- name: job_status_loop
CALL bench_job_status_loop(%(ids)s::uuid[], %(worker_id)s::uuid, NULL);

-- name: job_failure_loop
CALL bench_job_status_loop(%(ids)s::uuid[], %(worker_id)s::uuid, 'bench: terraform apply failed');
