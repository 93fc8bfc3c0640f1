-- prebuildd: no-transaction
--
-- The queue of prebuild jobs no provisioner has picked up, per organization: what the cap on
-- pending prebuild create jobs (--max-pending-prebuild-jobs, sql/functions/throttle.sql) counts
-- under its lock, once per tag set per reconcile and once per capped create. Without it the
-- count walks every not-yet-started job of the deployment (Coder's
-- provisioner_jobs_started_at_idx), people's included: a backlog of people's builds, the
-- moment the cap matters most, would make every reconcile slower (bench/throttle.py,
-- docs/benchmarks.md). With it the count reads the organization's queued prebuild jobs only,
-- which the cap itself keeps few.
--
-- Only jobs the prebuilds user initiated enter it (prebuildd's creates and deletes): people's
-- jobs, and every update that keeps a job's start time and initiator (heartbeats, logs), cost
-- Coder nothing but the predicate's test. Same rules as 0001: CONCURRENTLY, one statement.

CREATE INDEX CONCURRENTLY IF NOT EXISTS prebuildd_provisioner_jobs_prebuild_queue
    ON provisioner_jobs (organization_id)
    WHERE started_at IS NULL
      AND initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid;
