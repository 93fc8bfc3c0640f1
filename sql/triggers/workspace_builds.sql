-- prebuildd's event triggers on workspace_builds (functions: sql/functions/notify_event.sql).
--
-- One repeatable file per table: `prebuildd migrate` applies each in its own transaction, so
-- installing the triggers locks one of Coder's tables at a time, briefly. No `UPDATE OF`
-- column list and no `WHEN` clause: those would make Coder's columns and types depend on the
-- trigger and block Coder's own migrations; the function does all the filtering.
-- DROP IF EXISTS + CREATE (CREATE OR REPLACE TRIGGER needs PostgreSQL 14): the names are
-- those of every earlier release, so an upgraded database ends up with exactly this set.

-- The prebuilds user started a build (prebuildd's creates and deletes), or a person's first
-- build names a preset that keeps a pool (a miss, event `missed`). People's later builds leave
-- the function at its second test.
DROP TRIGGER IF EXISTS prebuildd_build_inserted ON workspace_builds;
CREATE TRIGGER prebuildd_build_inserted
    AFTER INSERT ON workspace_builds
    FOR EACH ROW EXECUTE FUNCTION prebuildd.notify_build_inserted();
