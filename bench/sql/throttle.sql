-- Queries of bench/throttle.py: a backlog of people's queued jobs, and its removal.

-- name: seed_people_backlog
-- %(count)s pending builds of people in the organization of %(template_id)s, untagged like
-- the seeded ones: what the cap's count of pending prebuild creates has to look past.
INSERT INTO provisioner_jobs (
    id, created_at, updated_at, organization_id, initiator_id, provisioner, storage_method,
    type, input, file_id, tags
)
SELECT
    gen_random_uuid(), now(), now(), t.organization_id, %(user_id)s::uuid, 'terraform', 'file',
    'workspace_build', '{}'::jsonb, gen_random_uuid(), '{"scope": "organization", "owner": ""}'
FROM templates AS t
CROSS JOIN generate_series(1, %(count)s::int)
WHERE t.id = %(template_id)s::uuid
RETURNING id;

-- name: forget_jobs
DELETE FROM provisioner_jobs
WHERE id = ANY(%(job_ids)s::uuid[]);

-- name: a_user
SELECT id FROM users WHERE NOT is_system ORDER BY id LIMIT 1;

-- name: forget_throttle_line
DELETE FROM prebuildd.throttle_waits;

-- name: pending_in_tag_set
-- Prebuild create jobs already queued for the tag set of %(version_id)s's prebuilds (the
-- fleet has some): a cap that holds must sit above them.
SELECT prebuildd.pending_prebuild_creates(k.organization_id, k.tags)
FROM prebuildd.throttle_keys(ARRAY[%(version_id)s::uuid]) AS k;

-- name: queued_prebuild_jobs_of_org
-- Prebuild jobs (creates and deletes) queued in the organization of %(template_id)s: what the
-- cap's count reads.
SELECT count(*)
FROM provisioner_jobs AS j
JOIN templates AS t ON t.organization_id = j.organization_id
WHERE t.id = %(template_id)s::uuid
  AND j.started_at IS NULL
  AND j.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid;

-- name: start_queued_prebuild_jobs_of_org
-- On the bench's clone only: a provisioner took every queued prebuild job of the organization
-- (the fleet is seeded without a cap, ~1,000 queued per organization; under a cap the queue
-- holds at most the cap's number of creates).
UPDATE provisioner_jobs AS j
SET started_at = now(), updated_at = now(), worker_id = md5('bench-worker')::uuid
FROM templates AS t
WHERE t.id = %(template_id)s::uuid
  AND j.organization_id = t.organization_id
  AND j.started_at IS NULL
  AND j.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid;

-- name: vacuum_jobs
-- What autovacuum does after such a burst of updates: the index entries of the jobs just
-- started are dead until a vacuum removes them.
VACUUM (ANALYZE) provisioner_jobs;
