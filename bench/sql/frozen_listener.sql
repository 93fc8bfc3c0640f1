-- bench/frozen_listener.py: what the bench watches (never measured itself).

-- name: frozen_listener_pids
-- The service's LISTEN session in this database (prebuildd.listener.APPLICATION_NAME).
SELECT pid
FROM pg_stat_activity
WHERE application_name = 'prebuildd-listener'
  AND datname = current_database();

-- name: frozen_listener_reconciled
-- The promotion is reconciled: the old version's create canceled, the new one's queued.
SELECT
    count(*) FILTER (
        WHERE b.template_version_preset_id = %(old)s::uuid AND j.job_status = 'canceled'
    ) AS canceled,
    count(*) FILTER (
        WHERE b.template_version_preset_id = %(new)s::uuid AND j.job_status = 'pending'
    ) AS pending
FROM workspace_builds AS b
JOIN provisioner_jobs AS j ON j.id = b.job_id
WHERE b.template_version_preset_id IN (%(old)s::uuid, %(new)s::uuid)
  AND b.build_number = 1;

-- name: frozen_listener_pending
SELECT count(*)
FROM workspace_builds AS b
JOIN provisioner_jobs AS j ON j.id = b.job_id
WHERE b.template_version_preset_id = %(preset)s::uuid
  AND j.job_status = 'pending';
