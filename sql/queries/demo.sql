-- Seed data for `prebuildd demo`: a small organisation with real Coder-shaped rows.

-- name: demo_seed_org
INSERT INTO organizations (id, name, display_name, description, created_at, updated_at)
VALUES (%(org_id)s, %(name)s, %(name)s, 'prebuildd demo organisation', now(), now())
ON CONFLICT DO NOTHING;

-- name: demo_seed_user
INSERT INTO users (id, email, username, name, hashed_password, created_at, updated_at, status, login_type)
VALUES (%(user_id)s, %(email)s, %(username)s, %(username)s, '\x'::bytea, now(), now(), 'active', 'password')
ON CONFLICT DO NOTHING;

-- name: demo_seed_template
-- A template and its first (active) version with a succeeded import job. Template and version
-- reference each other; foreign keys are checked at the end of the statement, so one
-- statement can insert both.
WITH import_job AS (
    INSERT INTO provisioner_jobs (
        id, created_at, updated_at, started_at, completed_at, organization_id, initiator_id,
        provisioner, storage_method, type, input, file_id, tags
    ) VALUES (
        gen_random_uuid(), now(), now(), now(), now(), %(org_id)s, %(user_id)s,
        'terraform', 'file', 'template_version_import', '{}'::jsonb, gen_random_uuid(),
        '{"scope": "organization", "owner": ""}'::jsonb
    )
    RETURNING id
), version AS (
    INSERT INTO template_versions (
        id, template_id, organization_id, created_at, updated_at, name, readme, job_id, created_by
    )
    SELECT %(version_id)s, %(template_id)s, %(org_id)s, now(), now(), %(version_name)s, '',
           import_job.id, %(user_id)s
    FROM import_job
    RETURNING id
)
INSERT INTO templates (
    id, created_at, updated_at, organization_id, name, display_name, provisioner,
    active_version_id, created_by
)
SELECT %(template_id)s, now(), now(), %(org_id)s, %(name)s, %(name)s, 'terraform', version.id,
       %(user_id)s
FROM version;

-- name: demo_add_version
-- A further, not yet active, version of a template.
WITH import_job AS (
    INSERT INTO provisioner_jobs (
        id, created_at, updated_at, started_at, completed_at, organization_id, initiator_id,
        provisioner, storage_method, type, input, file_id, tags
    ) VALUES (
        gen_random_uuid(), now(), now(), now(), now(), %(org_id)s, %(user_id)s,
        'terraform', 'file', 'template_version_import', '{}'::jsonb, gen_random_uuid(),
        '{"scope": "organization", "owner": ""}'::jsonb
    )
    RETURNING id
)
INSERT INTO template_versions (
    id, template_id, organization_id, created_at, updated_at, name, readme, job_id, created_by
)
SELECT %(version_id)s, %(template_id)s, %(org_id)s, now(), now(), %(version_name)s, '',
       import_job.id, %(user_id)s
FROM import_job;

-- name: demo_add_preset
INSERT INTO template_version_presets (
    id, template_version_id, name, desired_instances, invalidate_after_secs, scheduling_timezone
) VALUES (
    %(preset_id)s, %(version_id)s, %(name)s, %(desired)s, %(ttl)s, %(timezone)s
);

-- name: demo_add_preset_parameter
INSERT INTO template_version_preset_parameters (template_version_preset_id, name, value)
VALUES (%(preset_id)s, %(name)s, %(value)s);

-- name: demo_add_schedule
INSERT INTO template_version_preset_prebuild_schedules (preset_id, cron_expression, desired_instances)
VALUES (%(preset_id)s, %(cron)s, %(desired)s);

-- name: demo_promote
UPDATE templates
SET active_version_id = %(version_id)s, updated_at = now()
WHERE id = %(template_id)s;
