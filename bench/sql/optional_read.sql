-- Reference statement for bench/optional_read.py: `snapshot_presets` as it was before
-- template_version_presets.last_invalidated_at became optional (it named p.last_invalidated_at
-- directly, so it failed on Coder releases before v2.29.0). Kept only to be measured side by
-- side with the current query; the service never runs it.

-- name: snapshot_presets_before
-- Presets that want prebuilds, on every version of the templates (active or not), with the
-- context the planner needs to tell active from inactive.
SELECT
    p.id,
    p.name,
    t.id AS template_id,
    t.name AS template_name,
    o.id AS organization_id,
    o.name AS organization_name,
    v.id AS template_version_id,
    v.name AS template_version_name,
    t.active_version_id = v.id AS using_active_version,
    t.deleted AS template_deleted,
    t.deprecated <> '' AS template_deprecated,
    p.desired_instances,
    p.invalidate_after_secs,
    p.last_invalidated_at,
    p.scheduling_timezone,
    p.prebuild_status
FROM templates AS t
JOIN organizations AS o ON o.id = t.organization_id
JOIN template_versions AS v ON v.template_id = t.id
JOIN template_version_presets AS p ON p.template_version_id = v.id
WHERE t.id = ANY(%(template_ids)s::uuid[])
  AND p.desired_instances IS NOT NULL
ORDER BY t.id, v.created_at, v.id, p.name, p.id;

