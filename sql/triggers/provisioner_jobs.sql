-- prebuildd's event triggers on provisioner_jobs (functions: sql/functions/notify_event.sql).
--
-- One repeatable file per table: `prebuildd migrate` applies each in its own transaction, so
-- installing the triggers locks one of Coder's tables at a time, briefly. No `UPDATE OF`
-- column list and no `WHEN` clause: those would make Coder's columns and types depend on the
-- trigger and block Coder's own migrations; the function does all the filtering.
-- DROP IF EXISTS + CREATE (CREATE OR REPLACE TRIGGER needs PostgreSQL 14): the names are
-- those of every earlier release, so an upgraded database ends up with exactly this set.

-- A prebuild's job changed status. Coder's hottest table: provisioner heartbeats (updated_at
-- only), log appends and every user's jobs leave the function at its first or second test.
DROP TRIGGER IF EXISTS prebuildd_job_status ON provisioner_jobs;
CREATE TRIGGER prebuildd_job_status
    AFTER UPDATE ON provisioner_jobs
    FOR EACH ROW EXECUTE FUNCTION prebuildd.notify_job_status();
