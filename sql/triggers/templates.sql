-- prebuildd's event triggers on templates (functions: sql/functions/notify_event.sql).
--
-- One repeatable file per table: `prebuildd migrate` applies each in its own transaction, so
-- installing the triggers locks one of Coder's tables at a time, briefly. No `UPDATE OF`
-- column list and no `WHEN` clause: those would make Coder's columns and types depend on the
-- trigger and block Coder's own migrations; the function does all the filtering.
-- DROP IF EXISTS + CREATE (CREATE OR REPLACE TRIGGER needs PostgreSQL 14): the names are
-- those of every earlier release, so an upgraded database ends up with exactly this set.

-- A new template arrives with its active version: a promotion.
DROP TRIGGER IF EXISTS prebuildd_template_inserted ON templates;
CREATE TRIGGER prebuildd_template_inserted
    AFTER INSERT ON templates
    FOR EACH ROW EXECUTE FUNCTION prebuildd.notify_event('version_promoted');

-- The active version changed.
DROP TRIGGER IF EXISTS prebuildd_version_promoted ON templates;
CREATE TRIGGER prebuildd_version_promoted
    AFTER UPDATE ON templates
    FOR EACH ROW EXECUTE FUNCTION prebuildd.notify_event('version_promoted');

-- Deleted or deprecated changed.
DROP TRIGGER IF EXISTS prebuildd_template_changed ON templates;
CREATE TRIGGER prebuildd_template_changed
    AFTER UPDATE ON templates
    FOR EACH ROW EXECUTE FUNCTION prebuildd.notify_event('template_changed');

-- Coder only soft-deletes templates; a hard delete (an operator's cleanup) is the same news.
DROP TRIGGER IF EXISTS prebuildd_template_removed ON templates;
CREATE TRIGGER prebuildd_template_removed
    AFTER DELETE ON templates
    FOR EACH ROW EXECUTE FUNCTION prebuildd.notify_event('template_changed');
