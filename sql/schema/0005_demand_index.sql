-- prebuildd: no-transaction
--
-- Demand (hits and misses, sql/queries/demand.sql) is read per preset and time window: the
-- builds naming a preset, created within the last 14 days (a reconcile of a template with an
-- autoscale policy, once per hour), the last 24 hours (`prebuildd status`). With the build's
-- creation time in the key, such a read visits only the window's builds of the preset instead
-- of every build the preset ever had.
--
-- It replaces prebuildd_workspace_builds_preset (0001), whose one column it leads with: every
-- read that used that index (lookups by preset) uses this one, and Coder's writes to
-- workspace_builds keep maintaining one prebuildd index, not two. Created first, so no
-- moment is without one. Same rules as 0001: CONCURRENTLY, one statement per block.

CREATE INDEX CONCURRENTLY IF NOT EXISTS prebuildd_workspace_builds_preset_created
    ON workspace_builds (template_version_preset_id, created_at)
    WHERE template_version_preset_id IS NOT NULL;

DROP INDEX CONCURRENTLY IF EXISTS prebuildd_workspace_builds_preset;
