-- prebuildd: no-transaction
--
-- snapshot_prebuilds bounds each preset's recent builds by the largest desired count of its
-- schedules, a max() looked up once per live prebuild. The schedules table is tiny, so with
-- only the (preset_id) index the planner prefers a sequential scan of the whole table for
-- every lookup; at a 200-template batch that scan was ~40 % of the statement's CPU
-- (bench/scale.py, docs/benchmarks.md). With desired_instances in the index the lookup is an
-- index-only scan reading one entry, which the planner costs below the sequential scan.
--
-- Same rules as 0001: CONCURRENTLY for live Coder databases, one statement per block.

CREATE INDEX CONCURRENTLY IF NOT EXISTS prebuildd_preset_schedules_preset_desired
    ON template_version_preset_prebuild_schedules (preset_id, desired_instances);
