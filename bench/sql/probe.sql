-- Small writes the benches use to set up and undo one measured step (never measured).

-- name: set_preset_desired
UPDATE template_version_presets
SET desired_instances = %(desired)s::int
WHERE id = %(preset_id)s::uuid;

-- name: forget_jobs_of_workspaces
-- Undo prebuilds a bench created: their jobs first (builds and build parameters cascade).
DELETE FROM provisioner_jobs AS j
USING workspace_builds AS b
WHERE b.job_id = j.id
  AND b.workspace_id = ANY(%(workspace_ids)s::uuid[]);

-- name: forget_workspaces
DELETE FROM workspaces
WHERE id = ANY(%(workspace_ids)s::uuid[]);

-- name: live_prebuilds_of_preset
SELECT count(*)
FROM workspaces AS w
WHERE w.owner_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
  AND NOT w.deleted
  AND EXISTS (
      SELECT 1
      FROM workspace_builds AS b
      WHERE b.workspace_id = w.id
        AND b.template_version_preset_id = %(preset_id)s::uuid
  );

-- name: add_preset
-- A preset for a bench to drive (desired 0: nothing to do until the bench says so), with
-- two parameters like the seeded ones.
WITH preset AS (
    INSERT INTO template_version_presets (
        id, template_version_id, name, desired_instances, invalidate_after_secs
    )
    VALUES (%(preset_id)s::uuid, %(version_id)s::uuid, %(name)s, 0, 0)
    RETURNING id
)
INSERT INTO template_version_preset_parameters (template_version_preset_id, name, value)
SELECT preset.id, param.name, param.name || '-bench'
FROM preset
CROSS JOIN (VALUES ('region'), ('size')) AS param (name);

-- name: forget_prebuilds_of_preset
-- Undo every prebuild of one preset. Data-modifying CTEs all run to completion; deleting a
-- job or a workspace cascades to its builds and their parameters.
WITH builds AS (
    SELECT b.workspace_id, b.job_id
    FROM workspace_builds AS b
    WHERE b.template_version_preset_id = %(preset_id)s::uuid
),
jobs AS (
    DELETE FROM provisioner_jobs AS j
    USING builds
    WHERE j.id = builds.job_id
    RETURNING j.id
)
DELETE FROM workspaces AS w
USING builds
WHERE w.id = builds.workspace_id;
