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
-- workspace_builds keep maintaining the same entries. Created first, so no moment is without
-- one. Same rules as 0001: CONCURRENTLY, one statement per block.
--
-- The metrics' lifetime totals (demand_totals, every 15 s on every replica) read every first
-- build of every active preset: prebuilds' creates and people's misses. Through the index
-- above that meant visiting every later build of people's workspaces too: 7.4x the CPU of
-- Coder's own totals (prebuild_metrics) on the `spec` fleet where people's builds name their
-- preset, about 4x with this one (bench/demand.py --part reads, docs/benchmarks.md). A partial
-- index of first builds holds one entry per workspace, added when a workspace is created;
-- prebuild_metrics and the cancel of pending creates use it too.

CREATE INDEX CONCURRENTLY IF NOT EXISTS prebuildd_workspace_builds_preset_created
    ON workspace_builds (template_version_preset_id, created_at)
    WHERE template_version_preset_id IS NOT NULL;

CREATE INDEX CONCURRENTLY IF NOT EXISTS prebuildd_workspace_builds_first_preset
    ON workspace_builds (template_version_preset_id, created_at)
    WHERE build_number = 1 AND template_version_preset_id IS NOT NULL;

DROP INDEX CONCURRENTLY IF EXISTS prebuildd_workspace_builds_preset;
