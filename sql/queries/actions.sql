-- Writes that carry out the planner's actions (service/prebuildd/store/actions.py `execute`).
--
-- Each action is one call of a SECURITY DEFINER function of schema `prebuildd`
-- (sql/functions/prebuild_writes.sql), run inside the caller's transaction: the service role
-- has no write privilege on Coder's tables and cannot read Terraform state, and the functions
-- act only on prebuilds' rows. Each function is set-based (one call per action, whatever the
-- number of rows) and writes exactly the rows Coder's own workspace builder writes
-- (coderd/wsbuilder), queueing the provisioner wake-up Coder posts,
-- `pg_notify('provisioner_job_posted', ...)`. A NOTIFY is delivered at commit and dropped by a
-- rollback (or a rolled-back savepoint), so nothing is posted for work that did not happen;
-- identical payloads in one transaction are delivered once.
--
-- Results are those the store reads: the workspaces created / given a delete build / retired,
-- and for creates and deletes the number of distinct wake-ups posted.

-- name: create_prebuilds
-- %(count)s new prebuilds of one preset (workspace, pending job, build 1 `start`, the
-- preset's parameters), only on the active version of a live, non-deprecated template: anything
-- else creates nothing (a promotion that raced the plan). %(workspace_tags)s: the version's
-- workspace tags evaluated for the preset (key -> string), merged into the jobs' tags. A
-- version no build can be made from (no import job, or a failed one) is refused with SQLSTATE
-- 23V01, the one error on which the reconciler stores validation_failed.
SELECT c.workspace_id, c.postings
FROM prebuildd.create_prebuilds(
    %(preset_id)s::uuid,
    %(template_version_id)s::uuid,
    %(count)s::int,
    %(now)s::timestamptz,
    %(trace_metadata)s::jsonb,
    %(workspace_tags)s::jsonb
) AS c;

-- name: delete_prebuilds
-- A `delete` build for each given workspace that is still, under a row lock, an unclaimed
-- prebuild whose latest build is a succeeded `start`; the others are left out of the result
-- (claimed meanwhile, already being deleted, not a prebuild at all).
SELECT d.workspace_id, d.postings
FROM prebuildd.delete_prebuilds(
    %(workspace_ids)s::uuid[],
    %(now)s::timestamptz,
    %(trace_metadata)s::jsonb
) AS d;

-- name: cancel_pending_prebuilds
-- For one preset: cancel the still-queued first builds of prebuilds on a retired version and
-- retire those never-built workspaces; returns them.
SELECT r.workspace_id
FROM prebuildd.cancel_pending_prebuilds(%(preset_id)s::uuid, %(now)s::timestamptz) AS r;

-- name: set_preset_status
-- The status stored (text), no row when the preset does not exist.
SELECT s.status
FROM prebuildd.set_preset_status(%(preset_id)s::uuid, %(status)s::text) AS s (status);

-- name: execute_actions
-- Every create, delete and cancel of one reconcile in one call (sql/functions/
-- prebuild_actions.sql), each in a subtransaction of its own: one row per action, in order,
-- with the workspaces it created / deleted / retired, or the SQLSTATE and message of its
-- failure (that action rolled back alone). The service's own writes are not echoed back as
-- events.
SELECT a.ordinal, a.workspace_ids, a.error_code, a.error_message
FROM prebuildd.execute_actions(
    %(actions)s::jsonb,
    %(now)s::timestamptz,
    %(trace_metadata)s::jsonb
) AS a
ORDER BY a.ordinal;

