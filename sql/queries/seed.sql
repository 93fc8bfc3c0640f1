-- Coder rows one at a time, for tests and `prebuildd demo` (service/prebuildd/seed.py): calls of
-- the builder in sql/seed/coder_rows.sql, which prebuildd.seed.install() creates in the
-- session's pg_temp. Each call passes one-element arrays; a NULL parameter takes the builder's
-- default. Run as the owner of Coder's tables, never by `prebuildd run`.

-- name: seed_installed
-- Whether this session (and transaction) holds the builder: its file creates seed_agents last.
SELECT pg_catalog.to_regproc('pg_temp.seed_agents') IS NOT NULL;

-- name: seed_organization
SELECT pg_temp.seed_organizations(
    id => ARRAY[%(id)s::uuid],
    name => ARRAY[%(name)s::text],
    display_name => ARRAY[%(display_name)s::text],
    description => ARRAY[%(description)s::text]
);

-- name: seed_user
SELECT pg_temp.seed_users(
    id => ARRAY[%(id)s::uuid],
    username => ARRAY[%(username)s::text],
    email => ARRAY[%(email)s::text],
    name => ARRAY[%(name)s::text]
);

-- name: seed_job
SELECT pg_temp.seed_jobs(
    id => ARRAY[%(id)s::uuid],
    organization_id => ARRAY[%(organization_id)s::uuid],
    initiator_id => ARRAY[%(initiator_id)s::uuid],
    status => ARRAY[%(status)s::text],
    job_type => ARRAY[%(job_type)s::text],
    input => ARRAY[%(input)s::jsonb],
    created_at => ARRAY[%(created_at)s::timestamptz],
    provisioner => ARRAY[%(provisioner)s::text],
    tags => ARRAY[%(tags)s::jsonb],
    file_id => ARRAY[%(file_id)s::uuid],
    worker_id => ARRAY[%(worker_id)s::uuid]
);

-- name: seed_template
SELECT pg_temp.seed_templates(
    id => ARRAY[%(id)s::uuid],
    organization_id => ARRAY[%(organization_id)s::uuid],
    created_by => ARRAY[%(created_by)s::uuid],
    active_version_id => ARRAY[%(active_version_id)s::uuid],
    name => ARRAY[%(name)s::text],
    display_name => ARRAY[%(display_name)s::text],
    provisioner => ARRAY[%(provisioner)s::text],
    deleted => ARRAY[%(deleted)s::boolean],
    deprecated => ARRAY[%(deprecated)s::text]
);

-- name: seed_version
SELECT pg_temp.seed_versions(
    id => ARRAY[%(id)s::uuid],
    template_id => ARRAY[%(template_id)s::uuid],
    created_by => ARRAY[%(created_by)s::uuid],
    name => ARRAY[%(name)s::text],
    created_at => ARRAY[%(created_at)s::timestamptz],
    job_id => ARRAY[%(job_id)s::uuid],
    import_job => ARRAY[%(import_job)s::boolean],
    import_status => ARRAY[%(import_status)s::text],
    import_tags => ARRAY[%(import_tags)s::jsonb],
    organization_id => ARRAY[%(organization_id)s::uuid]
);

-- name: seed_promote
-- What promoting a version does: the template's active version changes.
UPDATE templates
SET active_version_id = %(version_id)s, updated_at = now()
WHERE id = %(template_id)s;

-- name: seed_preset
SELECT pg_temp.seed_presets(
    id => ARRAY[%(id)s::uuid],
    template_version_id => ARRAY[%(template_version_id)s::uuid],
    desired_instances => ARRAY[%(desired_instances)s::integer],
    name => ARRAY[%(name)s::text],
    invalidate_after_secs => ARRAY[%(invalidate_after_secs)s::integer],
    scheduling_timezone => ARRAY[%(scheduling_timezone)s::text],
    prebuild_status => ARRAY[%(prebuild_status)s::text],
    last_invalidated_at => ARRAY[%(last_invalidated_at)s::timestamptz]
);

-- name: seed_preset_parameters
-- Several at once: name and value arrays of one preset.
SELECT pg_temp.seed_preset_parameters(
    preset_id => array_fill(%(preset_id)s::uuid, ARRAY[cardinality(%(names)s::text[])]),
    name => %(names)s::text[],
    value => %(values)s::text[]
);

-- name: seed_schedule
SELECT pg_temp.seed_schedules(
    id => ARRAY[%(id)s::uuid],
    preset_id => ARRAY[%(preset_id)s::uuid],
    cron_expression => ARRAY[%(cron_expression)s::text],
    desired_instances => ARRAY[%(desired_instances)s::integer]
);

-- name: seed_workspace
SELECT pg_temp.seed_workspaces(
    id => ARRAY[%(id)s::uuid],
    template_id => ARRAY[%(template_id)s::uuid],
    owner_id => ARRAY[%(owner_id)s::uuid],
    name => ARRAY[%(name)s::text],
    created_at => ARRAY[%(created_at)s::timestamptz]
);

-- name: seed_build
SELECT pg_temp.seed_builds(
    id => ARRAY[%(id)s::uuid],
    workspace_id => ARRAY[%(workspace_id)s::uuid],
    template_version_id => ARRAY[%(template_version_id)s::uuid],
    build_number => ARRAY[%(build_number)s::integer],
    transition => ARRAY[%(transition)s::text],
    initiator_id => ARRAY[%(initiator_id)s::uuid],
    preset_id => ARRAY[%(preset_id)s::uuid],
    job_status => ARRAY[%(job_status)s::text],
    created_at => ARRAY[%(created_at)s::timestamptz],
    job_id => ARRAY[%(job_id)s::uuid],
    worker_id => ARRAY[%(worker_id)s::uuid]
);

-- name: seed_agent
SELECT pg_temp.seed_agents(
    id => ARRAY[%(id)s::uuid],
    job_id => ARRAY[%(job_id)s::uuid],
    lifecycle_state => ARRAY[%(lifecycle_state)s::text],
    name => ARRAY[%(name)s::text],
    parent_id => ARRAY[%(parent_id)s::uuid],
    deleted => ARRAY[%(deleted)s::boolean]
);

-- name: seed_preset_context
-- The version, template and organization of a preset (to build a workspace of it).
SELECT v.id, t.id, t.organization_id
FROM template_version_presets AS p
JOIN template_versions AS v ON v.id = p.template_version_id
JOIN templates AS t ON t.id = v.template_id
WHERE p.id = %(preset_id)s;

-- name: seed_latest_build
-- A workspace's newest build: its number, version and preset (to build the next one). One
-- row, NULLs for a workspace without builds; none for no such workspace.
SELECT b.build_number, b.template_version_id, b.template_version_preset_id
FROM workspaces AS w
LEFT JOIN LATERAL (
    SELECT wb.build_number, wb.template_version_id, wb.template_version_preset_id
    FROM workspace_builds AS wb
    WHERE wb.workspace_id = w.id
    ORDER BY wb.build_number DESC
    LIMIT 1
) AS b ON true
WHERE w.id = %(workspace_id)s;

-- name: seed_hand_over
-- What Coder's claim does to a prebuild's workspace row: a new owner, and a name of theirs.
UPDATE workspaces
SET owner_id = %(owner_id)s, name = %(name)s, updated_at = now()
WHERE id = %(workspace_id)s;

-- name: seed_prebuilds_settings
-- Coder's site_configs row of prebuild settings (the pause switch), stored verbatim.
INSERT INTO site_configs (key, value)
VALUES ('prebuilds_settings', %(value)s)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
