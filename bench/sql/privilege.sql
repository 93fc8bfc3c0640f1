-- Checks of bench/privilege.py: did the measured work happen? (never timed)

-- name: privilege_rows_of_preset
-- What the creates of one preset wrote: workspaces, builds, jobs, build parameters.
SELECT
    count(DISTINCT b.workspace_id) AS workspaces,
    count(*) AS builds,
    count(DISTINCT j.id) AS jobs,
    (
        SELECT count(*)
        FROM workspace_build_parameters AS bp
        JOIN workspace_builds AS pb ON pb.id = bp.workspace_build_id
        WHERE pb.template_version_preset_id = %(preset_id)s::uuid
    ) AS parameters
FROM workspace_builds AS b
JOIN provisioner_jobs AS j ON j.id = b.job_id
WHERE b.template_version_preset_id = %(preset_id)s::uuid;

-- name: privilege_templates_to_sweep
-- Templates a full sweep must lock and reconcile (as store.list_prebuild_templates).
SELECT count(DISTINCT v.template_id)
FROM template_version_presets AS p
JOIN template_versions AS v ON v.id = p.template_version_id
WHERE p.desired_instances IS NOT NULL
  AND v.template_id IS NOT NULL;
