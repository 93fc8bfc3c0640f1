-- Rows for bench/coder_releases.py, written into a scratch database that holds the schema of
-- one Coder release (its own coderd/database/dump.sql). Only columns every supported release
-- (v2.25.0 and later) has are named; Coder's defaults fill the rest. Fixed ids (the database
-- is thrown away): the script knows them as constants.
--
--   organization   c0de0000-0000-4000-8000-000000000001
--   admin user     c0de0000-0000-4000-8000-0000000000a1 (template-admin)
--   template 1     ...0000000000b1, versions ...0000000000c1 (active), ...0000000000c2 (later)
--     presets      ...0000000000d1 (version c1, 2 wanted), ...0000000000d2 (version c2, 1)
--   template 2     ...0000000000b2, version ...0000000000c3, preset ...0000000000d3 (1 wanted,
--                  three failed creates: the hard limit)

-- name: seed_world
-- What a Coder deployment has before prebuildd's first sweep. Coder's migrations insert the
-- prebuilds system user and the hard-limit notification template as data; dump.sql has no
-- data, so they are written here like those migrations leave them.
DO $org$
BEGIN
    -- Coder's main branch (after v2.34) added organizations.default_org_member_roles, NOT
    -- NULL without a default; older releases lack the column.
    IF EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'organizations'
          AND column_name = 'default_org_member_roles'
    ) THEN
        INSERT INTO organizations (id, name, description, created_at, updated_at, display_name,
                                   is_default, default_org_member_roles)
        VALUES ('c0de0000-0000-4000-8000-000000000001', 'coder', '', now(), now(), 'Coder',
                true, '{}');
    ELSE
        INSERT INTO organizations (id, name, description, created_at, updated_at, display_name,
                                   is_default)
        VALUES ('c0de0000-0000-4000-8000-000000000001', 'coder', '', now(), now(), 'Coder',
                true);
    END IF;
END
$org$;

INSERT INTO users (id, email, username, hashed_password, created_at, updated_at, status,
                   rbac_roles, login_type, is_system)
VALUES
    ('c42fdf75-3097-471c-8c33-fb52454d81c0', 'prebuilds@system', 'prebuilds', ''::bytea,
     now(), now(), 'active', '{}', 'none', true),
    ('c0de0000-0000-4000-8000-0000000000a1', 'admin@example.com', 'admin', ''::bytea,
     now(), now(), 'active', '{template-admin}', 'password', false);

INSERT INTO notification_templates (id, name, title_template, body_template, "group", actions)
VALUES ('414d9331-c1fc-4761-b40c-d1f4702279eb', 'Prebuild Failure Limit Reached',
        'Prebuild limit reached', 'Prebuilds of a preset stopped.', 'Template Events', '[]');

-- Import jobs of the three versions (their storage, file and tags are what new jobs copy).
INSERT INTO provisioner_jobs (id, created_at, updated_at, started_at, completed_at,
                              organization_id, initiator_id, provisioner, storage_method, type,
                              input, file_id, tags)
SELECT j.id, now(), now(), now(), now(), 'c0de0000-0000-4000-8000-000000000001',
       'c0de0000-0000-4000-8000-0000000000a1', 'terraform', 'file', 'template_version_import',
       '{}', gen_random_uuid(), '{"scope": "organization", "owner": ""}'
FROM (VALUES ('c0de0000-0000-4000-8000-0000000000e1'::uuid),
             ('c0de0000-0000-4000-8000-0000000000e2'::uuid),
             ('c0de0000-0000-4000-8000-0000000000e3'::uuid)) AS j (id);

INSERT INTO templates (id, created_at, updated_at, organization_id, name, provisioner,
                       active_version_id, created_by)
VALUES
    ('c0de0000-0000-4000-8000-0000000000b1', now(), now(),
     'c0de0000-0000-4000-8000-000000000001', 'release-check', 'terraform',
     'c0de0000-0000-4000-8000-0000000000c1', 'c0de0000-0000-4000-8000-0000000000a1'),
    ('c0de0000-0000-4000-8000-0000000000b2', now(), now(),
     'c0de0000-0000-4000-8000-000000000001', 'release-failing', 'terraform',
     'c0de0000-0000-4000-8000-0000000000c3', 'c0de0000-0000-4000-8000-0000000000a1');

INSERT INTO template_versions (id, template_id, organization_id, created_at, updated_at, name,
                               readme, job_id, created_by)
VALUES
    ('c0de0000-0000-4000-8000-0000000000c1', 'c0de0000-0000-4000-8000-0000000000b1',
     'c0de0000-0000-4000-8000-000000000001', now() - interval '1 hour', now(), 'v1', '',
     'c0de0000-0000-4000-8000-0000000000e1', 'c0de0000-0000-4000-8000-0000000000a1'),
    ('c0de0000-0000-4000-8000-0000000000c2', 'c0de0000-0000-4000-8000-0000000000b1',
     'c0de0000-0000-4000-8000-000000000001', now(), now(), 'v2', '',
     'c0de0000-0000-4000-8000-0000000000e2', 'c0de0000-0000-4000-8000-0000000000a1'),
    ('c0de0000-0000-4000-8000-0000000000c3', 'c0de0000-0000-4000-8000-0000000000b2',
     'c0de0000-0000-4000-8000-000000000001', now(), now(), 'v1', '',
     'c0de0000-0000-4000-8000-0000000000e3', 'c0de0000-0000-4000-8000-0000000000a1');

INSERT INTO template_version_presets (id, template_version_id, name, desired_instances)
VALUES
    ('c0de0000-0000-4000-8000-0000000000d1', 'c0de0000-0000-4000-8000-0000000000c1', 'small', 2),
    ('c0de0000-0000-4000-8000-0000000000d2', 'c0de0000-0000-4000-8000-0000000000c2', 'small', 1),
    ('c0de0000-0000-4000-8000-0000000000d3', 'c0de0000-0000-4000-8000-0000000000c3', 'big', 1);

INSERT INTO template_version_preset_parameters (template_version_preset_id, name, value)
VALUES ('c0de0000-0000-4000-8000-0000000000d1', 'region', 'eu'),
       ('c0de0000-0000-4000-8000-0000000000d2', 'region', 'eu');

-- Template 2's three failed creates (builds by the prebuilds user whose jobs failed).
INSERT INTO workspaces (id, created_at, updated_at, owner_id, organization_id, template_id,
                        name, last_used_at)
SELECT w.id, now(), now(), 'c42fdf75-3097-471c-8c33-fb52454d81c0',
       'c0de0000-0000-4000-8000-000000000001', 'c0de0000-0000-4000-8000-0000000000b2',
       'failed-' || w.n, now()
FROM (VALUES (1, 'c0de0000-0000-4000-8000-0000000000f1'::uuid),
             (2, 'c0de0000-0000-4000-8000-0000000000f2'::uuid),
             (3, 'c0de0000-0000-4000-8000-0000000000f3'::uuid)) AS w (n, id);

INSERT INTO provisioner_jobs (id, created_at, updated_at, started_at, completed_at, error,
                              organization_id, initiator_id, provisioner, storage_method, type,
                              input, file_id, tags)
SELECT w.job, now() - w.n * interval '1 minute', now(), now(), now(), 'boom',
       'c0de0000-0000-4000-8000-000000000001', 'c42fdf75-3097-471c-8c33-fb52454d81c0',
       'terraform', 'file', 'workspace_build', '{}', gen_random_uuid(),
       '{"scope": "organization", "owner": ""}'
FROM (VALUES (1, 'c0de0000-0000-4000-8000-000000000f11'::uuid),
             (2, 'c0de0000-0000-4000-8000-000000000f12'::uuid),
             (3, 'c0de0000-0000-4000-8000-000000000f13'::uuid)) AS w (n, job);

INSERT INTO workspace_builds (id, created_at, updated_at, workspace_id, template_version_id,
                              build_number, transition, initiator_id, job_id, reason,
                              template_version_preset_id)
SELECT gen_random_uuid(), now() - w.n * interval '1 minute', now(), w.id,
       'c0de0000-0000-4000-8000-0000000000c3', 1, 'start',
       'c42fdf75-3097-471c-8c33-fb52454d81c0', w.job, 'initiator',
       'c0de0000-0000-4000-8000-0000000000d3'
FROM (VALUES (1, 'c0de0000-0000-4000-8000-0000000000f1'::uuid,
                 'c0de0000-0000-4000-8000-000000000f11'::uuid),
             (2, 'c0de0000-0000-4000-8000-0000000000f2'::uuid,
                 'c0de0000-0000-4000-8000-000000000f12'::uuid),
             (3, 'c0de0000-0000-4000-8000-0000000000f3'::uuid,
                 'c0de0000-0000-4000-8000-000000000f13'::uuid)) AS w (n, id, job);

-- name: preset_builds
-- The builds of a preset's prebuilds, oldest first: what the sweeps did.
SELECT b.workspace_id, b.build_number, b.transition::text, j.job_status::text, j.id
FROM workspace_builds AS b
JOIN provisioner_jobs AS j ON j.id = b.job_id
WHERE b.template_version_preset_id = %(preset)s
  AND b.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'
ORDER BY b.workspace_id, b.build_number;

-- name: preset_status
SELECT prebuild_status::text FROM template_version_presets WHERE id = %(preset)s;

-- name: notifications_of
SELECT count(*) FROM notification_messages WHERE user_id = %(user)s;

-- name: provision_succeeded
-- What a provisioner does with a create: the job succeeds, the agent reports ready.
WITH done AS (
    UPDATE provisioner_jobs
    SET started_at = now(), completed_at = now(), updated_at = now()
    WHERE id = %(job)s
    RETURNING id
),
resource AS (
    INSERT INTO workspace_resources (id, created_at, job_id, transition, type, name)
    SELECT gen_random_uuid(), now(), done.id, 'start', 'docker_container', 'main'
    FROM done
    RETURNING id
)
INSERT INTO workspace_agents (id, created_at, updated_at, name, resource_id, auth_token,
                              architecture, operating_system, lifecycle_state)
SELECT gen_random_uuid(), now(), now(), 'main', resource.id, gen_random_uuid(), 'amd64',
       'linux', 'ready'
FROM resource;

-- name: provision_failed
-- What a provisioner does with a create it cannot build: the job fails with an error.
UPDATE provisioner_jobs
SET started_at = now(), completed_at = now(), updated_at = now(), error = 'release-check: boom'
WHERE id = %(job)s;

-- name: promote
UPDATE templates
SET active_version_id = 'c0de0000-0000-4000-8000-0000000000c2', updated_at = now()
WHERE id = 'c0de0000-0000-4000-8000-0000000000b1';

-- name: claim
-- What Coder's claim does to the workspace row.
UPDATE workspaces
SET owner_id = 'c0de0000-0000-4000-8000-0000000000a1', name = 'claimed', updated_at = now()
WHERE id = %(workspace)s;

-- name: change_preset
-- An operator's edit of a preset (Coder writes presets when a version is imported).
UPDATE template_version_presets SET desired_instances = 2
WHERE id = 'c0de0000-0000-4000-8000-0000000000d2';

-- name: has_column
SELECT EXISTS (
    SELECT 1 FROM information_schema.columns
    WHERE table_schema = current_schema() AND table_name = %(table)s AND column_name = %(column)s
);

-- name: prebuildd_objects_left
-- Anything of prebuildd's after `migrate --uninstall`: triggers, indexes, its schema.
SELECT
    (SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE 'prebuildd\_%')
  + (SELECT count(*) FROM pg_class WHERE relkind = 'i' AND relname LIKE 'prebuildd\_%')
  + (SELECT count(*) FROM pg_namespace WHERE nspname = 'prebuildd');
