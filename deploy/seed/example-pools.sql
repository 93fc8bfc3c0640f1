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
-- The rows are written by the builder of Coder rows that the tests, the benchmarks and the demo
-- use (sql/seed/coder_rows.sql, included below: its functions live in pg_temp, for this psql
-- session only; compose mounts sql/seed/ at /sql/seed, where the relative path leads).
--
-- Idempotent: fixed ids, and every call skips rows that already exist, so a second
-- `docker compose up` changes nothing. Tested against a migrated database by
-- tests/integration/test_deploy_files.py and tests/e2e/test_e2e_prometheus.py (which also
-- uses it to fill pools for a real Prometheus), both with psql.

\ir ../../sql/seed/coder_rows.sql

BEGIN;

SELECT pg_temp.seed_organizations(
    id => ARRAY['6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0001'::uuid],
    name => ARRAY['example'],
    display_name => ARRAY['Example'],
    description => ARRAY['prebuildd example data']
)
WHERE NOT EXISTS (
    SELECT FROM organizations WHERE id = '6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0001'
);

-- The template author (a template needs a creator).
SELECT pg_temp.seed_users(
    id => ARRAY['6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0002'::uuid],
    username => ARRAY['example-admin'],
    email => ARRAY['admin@example.test'],
    name => ARRAY['Example admin']
)
WHERE NOT EXISTS (SELECT FROM users WHERE id = '6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0002');

-- Each template, then its active version with the version's succeeded import job.
CREATE TEMP VIEW example_templates (template_id, version_id, name) AS
VALUES ('6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0101'::uuid,
        '6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0111'::uuid, 'python'),
       ('6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0201'::uuid,
        '6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0211'::uuid, 'go');

SELECT pg_temp.seed_templates(
    id => array_agg(e.template_id),
    organization_id => array_agg('6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0001'::uuid),
    created_by => array_agg('6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0002'::uuid),
    active_version_id => array_agg(e.version_id),
    name => array_agg(e.name),
    display_name => array_agg(e.name)
)
FROM example_templates AS e
WHERE NOT EXISTS (SELECT FROM templates AS t WHERE t.id = e.template_id);

SELECT pg_temp.seed_versions(
    id => array_agg(e.version_id),
    template_id => array_agg(e.template_id),
    name => array_agg('v1'::text)
)
FROM example_templates AS e
WHERE NOT EXISTS (SELECT FROM template_versions AS v WHERE v.id = e.version_id);

-- Presets `small` x3 and `large` x1 of python, `default` x2 of go (each prebuild replaced
-- after 10 minutes); each has one parameter, `size`, named like the preset.
CREATE TEMP VIEW example_presets (id, version_id, name, desired, ttl) AS
VALUES ('6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0121'::uuid,
        '6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0111'::uuid, 'small', 3, 0),
       ('6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0122'::uuid,
        '6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0111'::uuid, 'large', 1, 0),
       ('6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0221'::uuid,
        '6d1f3a52-8c4e-4d8a-9a51-3e0b7c2f0211'::uuid, 'default', 2, 600);

SELECT pg_temp.seed_presets(
    id => array_agg(e.id),
    template_version_id => array_agg(e.version_id),
    desired_instances => array_agg(e.desired),
    name => array_agg(e.name),
    invalidate_after_secs => array_agg(e.ttl),
    scheduling_timezone => array_agg('UTC'::text)
)
FROM example_presets AS e
WHERE NOT EXISTS (SELECT FROM template_version_presets AS p WHERE p.id = e.id);

SELECT pg_temp.seed_preset_parameters(
    preset_id => array_agg(e.id),
    name => array_agg('size'::text),
    value => array_agg(e.name)
)
FROM example_presets AS e
WHERE NOT EXISTS (
    SELECT FROM template_version_preset_parameters AS pp
    WHERE pp.template_version_preset_id = e.id AND pp.name = 'size'
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
