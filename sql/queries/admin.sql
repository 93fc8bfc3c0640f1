-- name: set_reconciliation_paused
-- Coder's own switch: site_configs 'prebuilds_settings' = {"reconciliation_paused": bool}.
-- Other keys of that JSON object, if any, are preserved.
INSERT INTO site_configs (key, value)
VALUES ('prebuilds_settings', jsonb_build_object('reconciliation_paused', %(paused)s::boolean)::text)
ON CONFLICT (key) DO UPDATE
SET value = (
    COALESCE(NULLIF(site_configs.value, '')::jsonb, '{}'::jsonb)
    || jsonb_build_object('reconciliation_paused', %(paused)s::boolean)
)::text;

-- name: invalidate_preset
-- Every prebuild of the preset created before now becomes expired and is replaced.
UPDATE template_version_presets
SET last_invalidated_at = %(now)s
WHERE id = %(preset_id)s
RETURNING id;

-- name: database_name
SELECT current_database();
