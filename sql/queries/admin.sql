-- name: set_reconciliation_paused
-- Coder's own switch: site_configs 'prebuilds_settings' = {"reconciliation_paused": bool},
-- written by a function of prebuildd's (sql/schema/0002_pause_switch.sql) so the service role
-- needs no rights on the rest of site_configs.
SELECT prebuildd.set_reconciliation_paused(%(paused)s::boolean);

-- name: invalidate_preset
-- Every prebuild of the preset created before now becomes expired and is replaced.
UPDATE template_version_presets
SET last_invalidated_at = %(now)s
WHERE id = %(preset_id)s
RETURNING id;
