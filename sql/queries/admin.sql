-- name: set_reconciliation_paused
-- Coder's own switch: site_configs 'prebuilds_settings' = {"reconciliation_paused": bool},
-- written by a function of prebuildd's (sql/functions/prebuild_writes.sql) so the service role
-- needs no rights on the rest of site_configs.
SELECT prebuildd.set_reconciliation_paused(%(paused)s::boolean);

-- name: invalidate_preset
-- Every prebuild of the preset created before now becomes expired and is replaced. Returns
-- the preset's id, no row when there is no such preset. "Now" is the database's now(): the
-- prebuilds' created_at it is compared with come from the database's clock too, never from
-- the host running the command.
SELECT i.preset_id
FROM prebuildd.invalidate_preset(%(preset_id)s::uuid, now()) AS i (preset_id);
