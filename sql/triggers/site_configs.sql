-- prebuildd's event triggers on site_configs (functions: sql/functions/notify_event.sql).
--
-- One repeatable file per table: `prebuildd migrate` applies each in its own transaction, so
-- installing the triggers locks one of Coder's tables at a time, briefly. No `UPDATE OF`
-- column list and no `WHEN` clause: those would make Coder's columns and types depend on the
-- trigger and block Coder's own migrations; the function does all the filtering.
-- DROP IF EXISTS + CREATE (CREATE OR REPLACE TRIGGER needs PostgreSQL 14): the names are
-- those of every earlier release, so an upgraded database ends up with exactly this set.

-- The pause switch (key 'prebuilds_settings') was written or removed: a global event. Every
-- other key leaves the function at its first test.
DROP TRIGGER IF EXISTS prebuildd_settings_inserted ON site_configs;
CREATE TRIGGER prebuildd_settings_inserted
    AFTER INSERT ON site_configs
    FOR EACH ROW EXECUTE FUNCTION prebuildd.notify_event('settings_changed');

DROP TRIGGER IF EXISTS prebuildd_settings_updated ON site_configs;
CREATE TRIGGER prebuildd_settings_updated
    AFTER UPDATE ON site_configs
    FOR EACH ROW EXECUTE FUNCTION prebuildd.notify_event('settings_changed');

DROP TRIGGER IF EXISTS prebuildd_settings_deleted ON site_configs;
CREATE TRIGGER prebuildd_settings_deleted
    AFTER DELETE ON site_configs
    FOR EACH ROW EXECUTE FUNCTION prebuildd.notify_event('settings_changed');
