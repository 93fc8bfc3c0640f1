-- bench/reaction.py: a next version for some templates of a seeded fleet, their promotions,
-- and the check that every promotion led to the expected writes.
--
-- `%(numbers)s` are template numbers of bench/fleet.py; ids follow its md5(label)::uuid
-- derivation, so the new version of template n, numbered %(version)s, is
-- md5('bench-version-<n>-<version>') and its presets md5('bench-preset-<n>-<version>-<p>').
-- The new version copies the presets of the version active now (names, desired counts,
-- timezones, parameters, schedules): after a promotion its pools must be filled from scratch
-- and the pools of the old version drained.

-- name: reaction_add_import_jobs
INSERT INTO provisioner_jobs (
    id, created_at, updated_at, started_at, completed_at, organization_id, initiator_id,
    provisioner, storage_method, type, input, worker_id, file_id, tags
)
SELECT
    md5('bench-import-' || n || '-' || %(version)s::int)::uuid, now(), now(), now(), now(),
    t.organization_id, md5('bench-user-1')::uuid, 'terraform', 'file',
    'template_version_import',
    jsonb_build_object(
        'template_version_id', md5('bench-version-' || n || '-' || %(version)s::int)::uuid
    ),
    md5('bench-worker')::uuid,
    md5('bench-file-' || n || '-' || %(version)s::int)::uuid,
    -- A tag of its own per template: the jobs of the new version's creates carry it, and so
    -- does their provisioner_job_posted wake-up, which tells the bench whose actions committed.
    jsonb_build_object('scope', 'organization', 'owner', '', 'bench_template', n::text)
FROM unnest(%(numbers)s::int[]) AS n
JOIN templates AS t ON t.id = md5('bench-template-' || n)::uuid;

-- name: reaction_add_versions
INSERT INTO template_versions (
    id, template_id, organization_id, created_at, updated_at, name, readme, job_id, created_by
)
SELECT
    md5('bench-version-' || n || '-' || %(version)s::int)::uuid, t.id, t.organization_id,
    now(), now(), 'v' || %(version)s::int, '',
    md5('bench-import-' || n || '-' || %(version)s::int)::uuid, md5('bench-user-1')::uuid
FROM unnest(%(numbers)s::int[]) AS n
JOIN templates AS t ON t.id = md5('bench-template-' || n)::uuid;

-- name: reaction_add_presets
-- Presets are named 'preset-<p>' by the fleet: <p> keeps the id derivation.
INSERT INTO template_version_presets (
    id, template_version_id, name, created_at, desired_instances, invalidate_after_secs,
    scheduling_timezone, is_default
)
SELECT
    md5('bench-preset-' || n || '-' || %(version)s::int || '-' || split_part(p.name, '-', 2))::uuid,
    md5('bench-version-' || n || '-' || %(version)s::int)::uuid,
    p.name, now(), p.desired_instances, p.invalidate_after_secs, p.scheduling_timezone,
    p.is_default
FROM unnest(%(numbers)s::int[]) AS n
JOIN templates AS t ON t.id = md5('bench-template-' || n)::uuid
JOIN template_version_presets AS p ON p.template_version_id = t.active_version_id;

-- name: reaction_add_preset_parameters
INSERT INTO template_version_preset_parameters (template_version_preset_id, name, value)
SELECT
    md5('bench-preset-' || n || '-' || %(version)s::int || '-' || split_part(p.name, '-', 2))::uuid,
    pp.name, pp.value
FROM unnest(%(numbers)s::int[]) AS n
JOIN templates AS t ON t.id = md5('bench-template-' || n)::uuid
JOIN template_version_presets AS p ON p.template_version_id = t.active_version_id
JOIN template_version_preset_parameters AS pp ON pp.template_version_preset_id = p.id;

-- name: reaction_add_schedules
INSERT INTO template_version_preset_prebuild_schedules (
    preset_id, cron_expression, desired_instances
)
SELECT
    md5('bench-preset-' || n || '-' || %(version)s::int || '-' || split_part(p.name, '-', 2))::uuid,
    s.cron_expression, s.desired_instances
FROM unnest(%(numbers)s::int[]) AS n
JOIN templates AS t ON t.id = md5('bench-template-' || n)::uuid
JOIN template_version_presets AS p ON p.template_version_id = t.active_version_id
JOIN template_version_preset_prebuild_schedules AS s ON s.preset_id = p.id;

-- name: reaction_promote
-- What Coder's "promote version" writes; the server's clock just before the COMMIT comes back.
UPDATE templates
SET active_version_id = %(version_id)s::uuid, updated_at = now()
WHERE id = %(template_id)s::uuid
RETURNING clock_timestamp();

-- name: reaction_now
SELECT clock_timestamp();

-- name: reaction_ping
SELECT pg_notify('bench_ping', %(payload)s::text);

-- name: reaction_listen_postings
LISTEN provisioner_job_posted;

-- name: reaction_listen_ping
LISTEN bench_ping;

-- name: reaction_verify
-- Per promoted template, what the service wrote after %(since)s: prebuilds created on the new
-- version (their first `start` build) and when (the reconcile's `now`), delete builds queued
-- for the old version's running prebuilds, and pending jobs of the old version canceled.
SELECT
    x.template_id,
    (
        SELECT count(*)
        FROM workspaces AS w
        JOIN workspace_builds AS b ON b.workspace_id = w.id
        WHERE w.template_id = x.template_id
          AND b.template_version_id = x.new_version_id
          AND b.build_number = 1
          AND b.transition = 'start'
          AND b.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
    ) AS created,
    (
        SELECT min(b.created_at)
        FROM workspaces AS w
        JOIN workspace_builds AS b ON b.workspace_id = w.id
        WHERE w.template_id = x.template_id
          AND b.template_version_id = x.new_version_id
          AND b.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
    ) AS first_create_at,
    (
        SELECT count(*)
        FROM workspaces AS w
        JOIN workspace_builds AS b ON b.workspace_id = w.id
        JOIN provisioner_jobs AS j ON j.id = b.job_id
        WHERE w.template_id = x.template_id
          AND b.template_version_id = x.old_version_id
          AND b.transition = 'delete'
          AND b.created_at >= %(since)s::timestamptz
          AND j.job_status = 'pending'
    ) AS deleted,
    (
        SELECT count(*)
        FROM workspaces AS w
        JOIN workspace_builds AS b ON b.workspace_id = w.id
        JOIN provisioner_jobs AS j ON j.id = b.job_id
        WHERE w.template_id = x.template_id
          AND b.template_version_id = x.old_version_id
          AND j.canceled_at >= %(since)s::timestamptz
    ) AS canceled
FROM unnest(
    %(template_ids)s::uuid[], %(old_version_ids)s::uuid[], %(new_version_ids)s::uuid[]
) AS x (template_id, old_version_id, new_version_id);
