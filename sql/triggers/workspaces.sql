-- prebuildd's event triggers on workspaces (functions: sql/functions/notify_event.sql).
--
-- One repeatable file per table: `prebuildd migrate` applies each in its own transaction, so
-- installing the triggers locks one of Coder's tables at a time, briefly. No `UPDATE OF`
-- column list and no `WHEN` clause: those would make Coder's columns and types depend on the
-- trigger and block Coder's own migrations; the function does all the filtering.
-- DROP IF EXISTS + CREATE (CREATE OR REPLACE TRIGGER needs PostgreSQL 14): the names are
-- those of every earlier release, so an upgraded database ends up with exactly this set.

-- A prebuild was handed to a user (its owner changed from the prebuilds user).
DROP TRIGGER IF EXISTS prebuildd_claimed ON workspaces;
CREATE TRIGGER prebuildd_claimed
    AFTER UPDATE ON workspaces
    FOR EACH ROW EXECUTE FUNCTION prebuildd.notify_claimed();
