-- prebuildd's event triggers on template_version_presets (functions: sql/functions/notify_event.sql).
--
-- One repeatable file per table: `prebuildd migrate` applies each in its own transaction, so
-- installing the triggers locks one of Coder's tables at a time, briefly. No `UPDATE OF`
-- column list and no `WHEN` clause: those would make Coder's columns and types depend on the
-- trigger and block Coder's own migrations; the function does all the filtering.
-- DROP IF EXISTS + CREATE (CREATE OR REPLACE TRIGGER needs PostgreSQL 14): the names are
-- those of every earlier release, so an upgraded database ends up with exactly this set.

DROP TRIGGER IF EXISTS prebuildd_preset_added_or_removed ON template_version_presets;
CREATE TRIGGER prebuildd_preset_added_or_removed
    AFTER INSERT OR DELETE ON template_version_presets
    FOR EACH ROW EXECUTE FUNCTION prebuildd.notify_event('preset_changed');

-- Its prebuild settings changed (desired count, TTL, time zone, invalidation).
DROP TRIGGER IF EXISTS prebuildd_preset_changed ON template_version_presets;
CREATE TRIGGER prebuildd_preset_changed
    AFTER UPDATE ON template_version_presets
    FOR EACH ROW EXECUTE FUNCTION prebuildd.notify_event('preset_changed');
