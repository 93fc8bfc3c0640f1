-- Queries of the simulated provisioner (service/prebuildd/provisioner.py): it plays the part
-- of Coder's provisioner daemons for dev, demo and tests, writing the rows they would write.

-- name: provisioner_listen
-- The channel Coder's provisioners listen on; a posting only wakes them, the table is the truth.
LISTEN provisioner_job_posted;

-- name: provisioner_acquire_job
-- Takes one job that nobody started, canceled or finished. Jobs initiated by people go before
-- prebuild jobs (a human is waiting; a pool refill is not), then oldest first. SKIP LOCKED lets
-- any number of provisioners acquire at once without ever sharing a job. Returns the build the
-- job executes (NULL columns for template imports and dry runs). The prebuilds user is
-- prebuildd.prebuilds_user_id(), inlined by the planner as the literal.
WITH picked AS (
    SELECT j.id
    FROM provisioner_jobs j
    WHERE j.started_at IS NULL
      AND j.canceled_at IS NULL
      AND j.completed_at IS NULL
    ORDER BY j.initiator_id = prebuildd.prebuilds_user_id(), j.created_at, j.id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
),
acquired AS (
    UPDATE provisioner_jobs j
    SET started_at = %(now)s,
        updated_at = %(now)s,
        worker_id = %(worker_id)s
    FROM picked
    WHERE j.id = picked.id
    RETURNING j.id, j.type
)
SELECT
    a.id AS job_id,
    a.type::text AS job_type,
    b.id AS build_id,
    b.workspace_id,
    b.transition::text AS transition
FROM acquired a
LEFT JOIN workspace_builds b ON b.job_id = a.id;

-- name: provisioner_heartbeat
-- Proves the job is alive (Coder's hung-job detector reads updated_at). Touches updated_at and
-- nothing else, so triggers watching job status stay quiet. Reports whether a cancel was
-- requested; no row means the job is no longer ours to run.
UPDATE provisioner_jobs
SET updated_at = %(now)s
WHERE id = %(job_id)s
  AND worker_id = %(worker_id)s
  AND completed_at IS NULL
RETURNING canceled_at IS NOT NULL AS cancel_requested;

-- name: provisioner_complete_job
-- Finishes a job this worker runs. A cancel requested at any point wins: the job ends canceled
-- (no error) whatever the build's outcome, so a canceled build never produces resources. The
-- returned job_status is the verdict the caller acts on; no row: not ours, nothing done.
UPDATE provisioner_jobs
SET completed_at = %(now)s,
    updated_at = %(now)s,
    error = CASE WHEN canceled_at IS NOT NULL THEN NULL ELSE %(error)s::text END
WHERE id = %(job_id)s
  AND worker_id = %(worker_id)s
  AND completed_at IS NULL
RETURNING job_status::text AS job_status;

-- name: provisioner_insert_resource
-- What a `start` build provisions: one machine.
INSERT INTO workspace_resources (id, created_at, job_id, transition, type, name)
VALUES (%(resource_id)s, %(now)s, %(job_id)s, 'start', 'simulated_vm', 'dev');

-- name: provisioner_insert_agent
-- The machine's top-level agent, connected and running its startup scripts. Every column
-- Coder declares NOT NULL without a default is given; the rest keep Coder's defaults.
INSERT INTO workspace_agents (
    id, created_at, updated_at, name, resource_id, auth_token, architecture,
    operating_system, directory, lifecycle_state, first_connected_at, last_connected_at,
    started_at, connection_timeout_seconds
)
VALUES (
    %(agent_id)s, %(now)s, %(now)s, 'main', %(resource_id)s, %(auth_token)s, 'amd64',
    'linux', '/home/coder', 'starting', %(now)s, %(now)s, %(now)s, 120
);

-- name: provisioner_record_build_state
-- Stores the provisioner's state on the build, as Coder does when a build completes; the next
-- build of the workspace (a claim, a stop) starts from it.
UPDATE workspace_builds
SET provisioner_state = %(state)s,
    updated_at = %(now)s
WHERE job_id = %(job_id)s;

-- name: provisioner_mark_workspace_deleted
-- A succeeded `delete` build removes the workspace (Coder soft-deletes it).
UPDATE workspaces
SET deleted = true,
    updated_at = %(now)s
WHERE id = (SELECT b.workspace_id FROM workspace_builds b WHERE b.job_id = %(job_id)s)
  AND NOT deleted;

-- name: provisioner_agents_ready
-- The startup scripts finished: the build's starting agents report `ready`.
UPDATE workspace_agents a
SET lifecycle_state = 'ready',
    ready_at = %(now)s,
    updated_at = %(now)s,
    last_connected_at = %(now)s
FROM workspace_resources r
WHERE r.job_id = %(job_id)s
  AND a.resource_id = r.id
  AND a.lifecycle_state = 'starting';
