-- example-pools.sql: example templates whose presets want prebuilds, for the local compose
-- stack only (deploy/compose.yaml runs it once, as the owner, after `prebuildd migrate`), so
-- that the replicas have pools to fill and the Grafana dashboard has something to show.
-- NEVER run it against Coder's real database: on a real deployment templates and presets
-- come from Coder (template admins publishing versions with presets).
--
-- Two templates in organisation `example`: `python` (presets `small` x3 and `large` x1) and
-- `go` (preset `default` x2, each prebuild replaced after 10 minutes); `small` has an
-- autoscale policy in `forecast` mode. The simulated provisioner of the compose stack builds
-- the prebuilds (and fails a few, on purpose).
--
-- Idempotent: fixed ids, and every insert skips rows that already exist, so a second
-- `docker compose up` changes nothing. Tested against a migrated database by
-- tests/e2e/test_e2e_prometheus.py, which also uses it to fill pools for a real Prometheus.

BEGIN;

INSERT INTO organizations (id, name, display_name, description, created_at, updated_at)
VALUES ('6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0001', 'example', 'Example', 'prebuildd example data',
        now(), now())
ON CONFLICT DO NOTHING;

-- The template author (a template needs a creator).
INSERT INTO users (id, email, username, name, hashed_password, created_at, updated_at, status,
                   login_type)
VALUES ('6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0002', 'admin@example.test', 'example-admin',
        'Example admin', '\x'::bytea, now(), now(), 'active', 'password')
ON CONFLICT DO NOTHING;

-- A template and its active version reference each other; foreign keys are checked at the end
-- of the statement, so each template is created, with its version and the version's succeeded
-- import job, by one statement (and only when it does not exist yet).
WITH wanted (template_id, version_id, name) AS (
    VALUES ('6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0101'::uuid,
            '6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0111'::uuid, 'python'),
           ('6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0201'::uuid,
            '6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0211'::uuid, 'go')
), missing AS (
    SELECT wanted.*, gen_random_uuid() AS job_id
    FROM wanted
    WHERE NOT EXISTS (SELECT 1 FROM templates t WHERE t.id = wanted.template_id)
), import_jobs AS (
    INSERT INTO provisioner_jobs (
        id, created_at, updated_at, started_at, completed_at, organization_id, initiator_id,
        provisioner, storage_method, type, input, file_id, tags
    )
    SELECT job_id, now(), now(), now(), now(), '6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0001',
           '6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0002', 'terraform', 'file',
           'template_version_import', '{}'::jsonb, gen_random_uuid(),
           '{"scope": "organization", "owner": ""}'::jsonb
    FROM missing
    RETURNING id
), versions AS (
    INSERT INTO template_versions (
        id, template_id, organization_id, created_at, updated_at, name, readme, job_id,
        created_by
    )
    SELECT version_id, template_id, '6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0001', now(), now(), 'v1',
           '', job_id, '6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0002'
    FROM missing
    JOIN import_jobs ON import_jobs.id = missing.job_id
    RETURNING id, template_id
)
INSERT INTO templates (
    id, created_at, updated_at, organization_id, name, display_name, provisioner,
    active_version_id, created_by
)
SELECT missing.template_id, now(), now(), '6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0001', missing.name,
       missing.name, 'terraform', versions.id, '6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0002'
FROM missing
JOIN versions ON versions.template_id = missing.template_id;

INSERT INTO template_version_presets (
    id, template_version_id, name, desired_instances, invalidate_after_secs, scheduling_timezone
) VALUES
    ('6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0121', '6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0111', 'small', 3,
     0, 'UTC'),
    ('6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0122', '6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0111', 'large', 1,
     0, 'UTC'),
    ('6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0221', '6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0211', 'default', 2,
     600, 'UTC')
ON CONFLICT DO NOTHING;

INSERT INTO template_version_preset_parameters (template_version_preset_id, name, value)
SELECT p.id, 'size', p.name
FROM template_version_presets p
WHERE p.id IN ('6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0121', '6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0122',
               '6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0221')
  AND NOT EXISTS (
      SELECT 1 FROM template_version_preset_parameters pp
      WHERE pp.template_version_preset_id = p.id AND pp.name = 'size'
  );

-- python/small is sized from demand in `forecast` mode: prebuildd reports the pool size its
-- demand suggests (metric prebuildd_prebuilt_workspaces_suggested, `prebuildd status`) and
-- acts on nothing. What `prebuildd autoscale set --preset <small> --mode forecast --max 6`
-- stores; `--mode auto` would let it act.
INSERT INTO prebuildd.autoscale_policies (template_id, preset_name, mode, min_instances,
                                          max_instances)
VALUES ('6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0101', 'small', 'forecast', 0, 6)
ON CONFLICT DO NOTHING;

COMMIT;
