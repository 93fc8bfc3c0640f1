-- The one builder of Coder rows outside Coder: test fixtures (tests/factories.py and
-- tests/integration/_trigger_rows.py), the benchmarks' fleets (bench/sql/fleet.sql), the demo's
-- templates (service/prebuildd/demo.py) and the compose stack's example pools
-- (deploy/seed/example-pools.sql). What a row of each of Coder's tables holds -- which columns
-- are filled, how a job's status becomes timestamps, what a build's job and parameters are --
-- is written here once.
--
-- Never part of a production database: `prebuildd migrate` does not read this folder, and every
-- function is created in pg_temp, so it lives only as long as the session that ran this file
-- (or its transaction, if that rolls back) and no other session sees it. Python runs the file
-- through prebuildd.seed.install(); psql includes it (`\ir`), as example-pools.sql does.
-- PL/pgSQL, whose statements are resolved when they run: the file installs on every schema
-- prebuildd supports, and a function fails only when called on one that lacks its columns
-- (seed_presets with last_invalidated_at before Coder v2.29).
--
-- Set-based: every argument is an array with one element per row, and the arrays of one call
-- are read side by side (unnest(a, b, ...)). Row-by-row callers pass one-element arrays
-- (sql/queries/seed.sql), a fleet passes array_agg(...) over hundreds of thousands of rows.
-- An argument left out, or a NULL element, takes the default written next to it, except where
-- NULL is itself a value Coder stores (said so). Ids are the caller's, or new ones where a
-- default says so. Each function returns the number of rows it inserted into its main table.
--
-- Names are Coder's tables' own, unqualified: they resolve through the caller's search_path,
-- as Coder's own queries do.

-- ---------------------------------------------------------------------------------------------
-- Organizations and users
-- ---------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pg_temp.seed_organizations(
    id           uuid[],
    name         text[]    DEFAULT NULL,  -- 'org-' and the id's first 8 hex digits
    display_name text[]    DEFAULT NULL,  -- the name
    description  text[]    DEFAULT NULL,  -- ''
    is_default   boolean[] DEFAULT NULL   -- false (Coder allows one default organization)
) RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    added bigint;
BEGIN
    INSERT INTO organizations (
        id, name, display_name, description, is_default, created_at, updated_at
    )
    SELECT r.id, o.name, COALESCE(r.display_name, o.name), COALESCE(r.description, ''),
           COALESCE(r.is_default, false), now(), now()
    FROM unnest(seed_organizations.id, seed_organizations.name, seed_organizations.display_name,
                seed_organizations.description, seed_organizations.is_default)
        AS r (id, name, display_name, description, is_default)
    CROSS JOIN LATERAL (SELECT COALESCE(r.name, 'org-' || left(r.id::text, 8)) AS name) AS o;
    GET DIAGNOSTICS added = ROW_COUNT;
    RETURN added;
END;
$fn$;

-- Active users who log in with a password (never used: the hash is empty).
CREATE OR REPLACE FUNCTION pg_temp.seed_users(
    id         uuid[],
    username   text[]        DEFAULT NULL,  -- 'user-' and the id's first 8 hex digits
    email      text[]        DEFAULT NULL,  -- <username>@example.com
    name       text[]        DEFAULT NULL,  -- ''
    created_at timestamptz[] DEFAULT NULL   -- now()
) RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    added bigint;
BEGIN
    INSERT INTO users (
        id, email, username, name, hashed_password, created_at, updated_at, status, login_type
    )
    SELECT r.id, COALESCE(r.email, u.username || '@example.com'), u.username,
           COALESCE(r.name, ''), ''::bytea, COALESCE(r.created_at, now()), now(), 'active',
           'password'
    FROM unnest(seed_users.id, seed_users.username, seed_users.email, seed_users.name,
                seed_users.created_at)
        AS r (id, username, email, name, created_at)
    CROSS JOIN LATERAL (
        SELECT COALESCE(r.username, 'user-' || left(r.id::text, 8)) AS username
    ) AS u;
    GET DIAGNOSTICS added = ROW_COUNT;
    RETURN added;
END;
$fn$;

-- ---------------------------------------------------------------------------------------------
-- Provisioner jobs
-- ---------------------------------------------------------------------------------------------

-- A job's status is given as Coder derives it (provisioner_jobs.job_status, a generated
-- column) and written as the timestamps and error it is derived from: started 1 s after
-- creation (running, succeeded, failed, canceling), a cancel requested after 2 s (canceling,
-- canceled), completed after 3 s (succeeded, failed, canceled), an error when failed. A started
-- job has a worker.
CREATE OR REPLACE FUNCTION pg_temp.seed_jobs(
    id              uuid[],
    organization_id uuid[],
    initiator_id    uuid[],
    status          text[]        DEFAULT NULL,  -- 'succeeded'
    job_type        text[]        DEFAULT NULL,  -- 'workspace_build'
    input           jsonb[]       DEFAULT NULL,  -- {}
    created_at      timestamptz[] DEFAULT NULL,  -- now()
    provisioner     text[]        DEFAULT NULL,  -- 'terraform'
    tags            jsonb[]       DEFAULT NULL,  -- an untagged provisioner's (organization scope)
    file_id         uuid[]        DEFAULT NULL,  -- a new id (the source archive's)
    worker_id       uuid[]        DEFAULT NULL   -- a new id once started; none before
) RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    unknown text;
    added   bigint;
BEGIN
    SELECT s INTO unknown
    FROM unnest(seed_jobs.status) AS s
    WHERE s NOT IN ('pending', 'running', 'succeeded', 'failed', 'canceling', 'canceled')
    LIMIT 1;
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'seed_jobs: unknown job status %', unknown
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO provisioner_jobs (
        id, created_at, updated_at, started_at, canceled_at, completed_at, error,
        organization_id, initiator_id, provisioner, storage_method, type, input, worker_id,
        file_id, tags
    )
    SELECT
        r.id, j.at, j.at,
        CASE WHEN j.started THEN j.at + interval '1 second' END,
        CASE WHEN j.status IN ('canceling', 'canceled') THEN j.at + interval '2 seconds' END,
        CASE WHEN j.status IN ('succeeded', 'failed', 'canceled')
            THEN j.at + interval '3 seconds' END,
        CASE WHEN j.status = 'failed' THEN 'terraform apply failed' END,
        r.organization_id, r.initiator_id,
        COALESCE(r.provisioner, 'terraform')::provisioner_type, 'file',
        COALESCE(r.job_type, 'workspace_build')::provisioner_job_type, COALESCE(r.input, '{}'),
        COALESCE(r.worker_id, CASE WHEN j.started THEN gen_random_uuid() END),
        COALESCE(r.file_id, gen_random_uuid()),
        COALESCE(r.tags, '{"scope": "organization", "owner": ""}')
    FROM unnest(seed_jobs.id, seed_jobs.organization_id, seed_jobs.initiator_id, seed_jobs.status,
                seed_jobs.job_type, seed_jobs.input, seed_jobs.created_at, seed_jobs.provisioner,
                seed_jobs.tags, seed_jobs.file_id, seed_jobs.worker_id)
        AS r (id, organization_id, initiator_id, status, job_type, input, created_at,
              provisioner, tags, file_id, worker_id)
    CROSS JOIN LATERAL (
        SELECT
            COALESCE(r.created_at, now()) AS at,
            COALESCE(r.status, 'succeeded') AS status,
            COALESCE(r.status, 'succeeded') IN ('running', 'succeeded', 'failed', 'canceling')
                AS started
    ) AS j;
    GET DIAGNOSTICS added = ROW_COUNT;
    RETURN added;
END;
$fn$;

-- ---------------------------------------------------------------------------------------------
-- Templates, versions, presets
-- ---------------------------------------------------------------------------------------------

-- Templates only. A template and its first version reference each other, and
-- templates.active_version_id has no foreign key (as in Coder): create the template pointing at
-- the version to come, then that version with seed_versions.
CREATE OR REPLACE FUNCTION pg_temp.seed_templates(
    id                uuid[],
    organization_id   uuid[],
    created_by        uuid[],
    active_version_id uuid[],
    name              text[]        DEFAULT NULL,  -- 'tpl-' and the id's first 8 hex digits
    display_name      text[]        DEFAULT NULL,  -- ''
    provisioner       text[]        DEFAULT NULL,  -- 'terraform'
    deleted           boolean[]     DEFAULT NULL,  -- false
    deprecated        text[]        DEFAULT NULL,  -- '' (non-empty: deprecated, with that message)
    created_at        timestamptz[] DEFAULT NULL   -- now()
) RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    added bigint;
BEGIN
    INSERT INTO templates (
        id, created_at, updated_at, organization_id, deleted, name, display_name, provisioner,
        active_version_id, created_by, deprecated
    )
    SELECT r.id, COALESCE(r.created_at, now()), COALESCE(r.created_at, now()), r.organization_id,
           COALESCE(r.deleted, false), COALESCE(r.name, 'tpl-' || left(r.id::text, 8)),
           COALESCE(r.display_name, ''), COALESCE(r.provisioner, 'terraform')::provisioner_type,
           r.active_version_id, r.created_by, COALESCE(r.deprecated, '')
    FROM unnest(seed_templates.id, seed_templates.organization_id, seed_templates.created_by,
                seed_templates.active_version_id, seed_templates.name,
                seed_templates.display_name, seed_templates.provisioner, seed_templates.deleted,
                seed_templates.deprecated, seed_templates.created_at)
        AS r (id, organization_id, created_by, active_version_id, name, display_name,
              provisioner, deleted, deprecated, created_at);
    GET DIAGNOSTICS added = ROW_COUNT;
    RETURN added;
END;
$fn$;

-- Versions and their import jobs (a template_version_import job of the template's
-- provisioner, initiated by the version's creator, input {"template_version_id": <id>}).
-- Promotion is a separate write (sql/queries/seed.sql, seed_promote).
CREATE OR REPLACE FUNCTION pg_temp.seed_versions(
    id              uuid[],
    template_id     uuid[],                      -- NULL: a version of no template (yet)
    created_by      uuid[]        DEFAULT NULL,  -- the template's creator
    name            text[]        DEFAULT NULL,  -- 'v-' and the id's first 8 hex digits
    -- clock_timestamp(), not now(): versions made in one transaction still come in order.
    created_at      timestamptz[] DEFAULT NULL,
    job_id          uuid[]        DEFAULT NULL,  -- the import job's: a new id
    import_job      boolean[]     DEFAULT NULL,  -- true; false: job_id points at no job (Coder
                                                 -- has no foreign key there)
    import_status   text[]        DEFAULT NULL,  -- the import job's status: 'succeeded'
    import_tags     jsonb[]       DEFAULT NULL,  -- the import job's tags: untagged
    file_id         uuid[]        DEFAULT NULL,  -- the import job's source archive: a new id
    organization_id uuid[]        DEFAULT NULL   -- the template's
) RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    ids          uuid[];
    template_ids uuid[];
    creators     uuid[];
    names        text[];
    stamps       timestamptz[];
    job_ids      uuid[];
    with_job     boolean[];
    statuses     text[];
    tag_sets     jsonb[];
    file_ids     uuid[];
    org_ids      uuid[];
    provisioners text[];
    added        bigint;
BEGIN
    -- One pass resolves the defaults into arrays that stay aligned: one aggregate node feeds
    -- every array_agg the same rows in the same order.
    SELECT array_agg(r.id), array_agg(r.template_id),
           array_agg(COALESCE(r.created_by, t.created_by)),
           array_agg(COALESCE(r.name, 'v-' || left(r.id::text, 8))),
           array_agg(COALESCE(r.created_at, clock_timestamp())),
           array_agg(COALESCE(r.job_id, gen_random_uuid())),
           array_agg(COALESCE(r.import_job, true)), array_agg(r.import_status),
           array_agg(r.import_tags), array_agg(r.file_id),
           array_agg(COALESCE(r.organization_id, t.organization_id)),
           array_agg(t.provisioner::text)
      INTO ids, template_ids, creators, names, stamps, job_ids, with_job, statuses, tag_sets,
           file_ids, org_ids, provisioners
      FROM unnest(seed_versions.id, seed_versions.template_id, seed_versions.created_by,
                  seed_versions.name, seed_versions.created_at, seed_versions.job_id,
                  seed_versions.import_job, seed_versions.import_status,
                  seed_versions.import_tags, seed_versions.file_id,
                  seed_versions.organization_id)
          AS r (id, template_id, created_by, name, created_at, job_id, import_job, import_status,
                import_tags, file_id, organization_id)
      LEFT JOIN templates AS t ON t.id = r.template_id;
    PERFORM pg_temp.seed_jobs(
        id => array_agg(v.job_id),
        organization_id => array_agg(v.organization_id),
        initiator_id => array_agg(v.created_by),
        status => array_agg(v.status),
        job_type => array_agg('template_version_import'::text),
        input => array_agg(jsonb_build_object('template_version_id', v.id)),
        created_at => array_agg(v.created_at),
        provisioner => array_agg(v.provisioner),
        tags => array_agg(v.tags),
        file_id => array_agg(v.file_id)
    )
    FROM unnest(ids, job_ids, org_ids, creators, statuses, stamps, provisioners, tag_sets,
                file_ids, with_job)
        AS v (id, job_id, organization_id, created_by, status, created_at, provisioner, tags,
              file_id, with_job)
    WHERE v.with_job;
    INSERT INTO template_versions (
        id, template_id, organization_id, created_at, updated_at, name, readme, job_id, created_by
    )
    SELECT v.id, v.template_id, v.organization_id, v.created_at, v.created_at, v.name, '',
           v.job_id, v.created_by
    FROM unnest(ids, template_ids, org_ids, stamps, names, job_ids, creators)
        AS v (id, template_id, organization_id, created_at, name, job_id, created_by);
    GET DIAGNOSTICS added = ROW_COUNT;
    RETURN added;
END;
$fn$;

-- Presets of versions, with their parameters and prebuild schedules (functions below).
CREATE OR REPLACE FUNCTION pg_temp.seed_presets(
    id                    uuid[],
    template_version_id   uuid[],
    desired_instances     integer[],                   -- as stored: NULL is a preset without
                                                       -- prebuilds
    name                  text[]        DEFAULT NULL,  -- 'preset-' and the id's first 8 hex digits
    invalidate_after_secs integer[]     DEFAULT NULL,  -- as stored (NULL or 0: no time to live)
    scheduling_timezone   text[]        DEFAULT NULL,  -- '' (schedules read in UTC)
    prebuild_status       text[]        DEFAULT NULL,  -- 'healthy'
    is_default            boolean[]     DEFAULT NULL,  -- false
    created_at            timestamptz[] DEFAULT NULL,  -- now()
    last_invalidated_at   timestamptz[] DEFAULT NULL   -- never; a column since Coder v2.29, so
                                                       -- written by a second statement, only
                                                       -- when given
) RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    added bigint;
BEGIN
    INSERT INTO template_version_presets (
        id, template_version_id, name, created_at, desired_instances, invalidate_after_secs,
        scheduling_timezone, prebuild_status, is_default
    )
    SELECT r.id, r.template_version_id, COALESCE(r.name, 'preset-' || left(r.id::text, 8)),
           COALESCE(r.created_at, now()), r.desired_instances, r.invalidate_after_secs,
           COALESCE(r.scheduling_timezone, ''),
           COALESCE(r.prebuild_status, 'healthy')::prebuild_status, COALESCE(r.is_default, false)
    FROM unnest(seed_presets.id, seed_presets.template_version_id,
                seed_presets.desired_instances, seed_presets.name,
                seed_presets.invalidate_after_secs, seed_presets.scheduling_timezone,
                seed_presets.prebuild_status, seed_presets.is_default, seed_presets.created_at)
        AS r (id, template_version_id, desired_instances, name, invalidate_after_secs,
              scheduling_timezone, prebuild_status, is_default, created_at);
    GET DIAGNOSTICS added = ROW_COUNT;
    IF EXISTS (SELECT FROM unnest(seed_presets.last_invalidated_at) AS at WHERE at IS NOT NULL) THEN
        UPDATE template_version_presets AS p
        SET last_invalidated_at = r.last_invalidated_at
        FROM unnest(seed_presets.id, seed_presets.last_invalidated_at)
            AS r (id, last_invalidated_at)
        WHERE p.id = r.id
          AND r.last_invalidated_at IS NOT NULL;
    END IF;
    RETURN added;
END;
$fn$;

CREATE OR REPLACE FUNCTION pg_temp.seed_preset_parameters(
    preset_id uuid[],
    name      text[],
    value     text[]
) RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    added bigint;
BEGIN
    INSERT INTO template_version_preset_parameters (template_version_preset_id, name, value)
    SELECT r.preset_id, r.name, r.value
    FROM unnest(seed_preset_parameters.preset_id, seed_preset_parameters.name,
                seed_preset_parameters.value)
        AS r (preset_id, name, value);
    GET DIAGNOSTICS added = ROW_COUNT;
    RETURN added;
END;
$fn$;

-- Prebuild schedules: from cron_expression's times on, the preset wants desired_instances
-- (read in the preset's scheduling_timezone).
CREATE OR REPLACE FUNCTION pg_temp.seed_schedules(
    preset_id         uuid[],
    cron_expression   text[],
    desired_instances integer[],
    id                uuid[] DEFAULT NULL  -- a new id
) RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    added bigint;
BEGIN
    INSERT INTO template_version_preset_prebuild_schedules (
        id, preset_id, cron_expression, desired_instances
    )
    SELECT COALESCE(r.id, gen_random_uuid()), r.preset_id, r.cron_expression,
           r.desired_instances
    FROM unnest(seed_schedules.preset_id, seed_schedules.cron_expression,
                seed_schedules.desired_instances, seed_schedules.id)
        AS r (preset_id, cron_expression, desired_instances, id);
    GET DIAGNOSTICS added = ROW_COUNT;
    RETURN added;
END;
$fn$;

-- ---------------------------------------------------------------------------------------------
-- Workspaces, builds, agents
-- ---------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pg_temp.seed_workspaces(
    id              uuid[],
    template_id     uuid[],
    owner_id        uuid[],
    name            text[]        DEFAULT NULL,  -- 'ws-' and 16 hex digits of the id's md5
    created_at      timestamptz[] DEFAULT NULL,  -- now(); also when it was last used
    deleted         boolean[]     DEFAULT NULL,  -- false
    organization_id uuid[]        DEFAULT NULL   -- the template's
) RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    added bigint;
BEGIN
    INSERT INTO workspaces (
        id, created_at, updated_at, owner_id, organization_id, template_id, deleted, name,
        last_used_at
    )
    SELECT r.id, w.at, w.at, r.owner_id,
           COALESCE(r.organization_id,
                    (SELECT t.organization_id FROM templates AS t WHERE t.id = r.template_id)),
           r.template_id, COALESCE(r.deleted, false),
           COALESCE(r.name, 'ws-' || left(md5(r.id::text), 16)), w.at
    FROM unnest(seed_workspaces.id, seed_workspaces.template_id, seed_workspaces.owner_id,
                seed_workspaces.name, seed_workspaces.created_at, seed_workspaces.deleted,
                seed_workspaces.organization_id)
        AS r (id, template_id, owner_id, name, created_at, deleted, organization_id)
    CROSS JOIN LATERAL (SELECT COALESCE(r.created_at, now()) AS at) AS w;
    GET DIAGNOSTICS added = ROW_COUNT;
    RETURN added;
END;
$fn$;

-- Builds with their jobs, as Coder's workspace builder writes them: a workspace_build job
-- (organization and provisioner of the workspace's template, the version's source archive,
-- input {"workspace_build_id": <id>} plus job_input, created with the build) and, for a build
-- of a preset, the preset's parameters as the build's parameters.
CREATE OR REPLACE FUNCTION pg_temp.seed_builds(
    id                  uuid[],
    workspace_id        uuid[],
    template_version_id uuid[],
    build_number        integer[],
    transition          text[],                      -- start, stop, delete
    initiator_id        uuid[],
    preset_id           uuid[]        DEFAULT NULL,  -- as stored: NULL is no preset
    job_status          text[]        DEFAULT NULL,  -- seed_jobs' status: 'succeeded'
    created_at          timestamptz[] DEFAULT NULL,  -- now()
    job_id              uuid[]        DEFAULT NULL,  -- a new id
    job_input           jsonb[]       DEFAULT NULL,  -- more keys of the job's input
    worker_id           uuid[]        DEFAULT NULL,  -- seed_jobs' worker_id
    preset_parameters   boolean[]     DEFAULT NULL,  -- true: the preset's parameters are the
                                                     -- build's; false: none
    organization_id     uuid[]        DEFAULT NULL,  -- the workspace's
    provisioner         text[]        DEFAULT NULL,  -- the workspace's template's
    file_id             uuid[]        DEFAULT NULL   -- the version's import job's, else a new id
) RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    ids           uuid[];
    workspace_ids uuid[];
    version_ids   uuid[];
    numbers       integer[];
    transitions   text[];
    initiators    uuid[];
    preset_ids    uuid[];
    statuses      text[];
    job_ids       uuid[];
    inputs        jsonb[];
    workers       uuid[];
    with_params   boolean[];
    org_ids       uuid[];
    provisioners  text[];
    file_ids      uuid[];
    stamps        timestamptz[];
    added         bigint;
BEGIN
    -- One pass resolves the defaults into arrays that stay aligned (see seed_versions); the
    -- lookups run only for the rows that need them.
    SELECT array_agg(r.id), array_agg(r.workspace_id), array_agg(r.template_version_id),
           array_agg(r.build_number), array_agg(r.transition), array_agg(r.initiator_id),
           array_agg(r.preset_id), array_agg(r.job_status),
           array_agg(COALESCE(r.job_id, gen_random_uuid())),
           array_agg(jsonb_build_object('workspace_build_id', r.id)
                     || COALESCE(r.job_input, '{}')),
           array_agg(r.worker_id), array_agg(COALESCE(r.preset_parameters, true)),
           array_agg(COALESCE(
               r.organization_id,
               (SELECT w.organization_id FROM workspaces AS w WHERE w.id = r.workspace_id))),
           array_agg(COALESCE(
               r.provisioner,
               (SELECT t.provisioner::text
                FROM workspaces AS w
                JOIN templates AS t ON t.id = w.template_id
                WHERE w.id = r.workspace_id))),
           array_agg(COALESCE(
               r.file_id,
               (SELECT j.file_id
                FROM template_versions AS v
                JOIN provisioner_jobs AS j ON j.id = v.job_id
                WHERE v.id = r.template_version_id),
               gen_random_uuid())),
           array_agg(COALESCE(r.created_at, now()))
      INTO ids, workspace_ids, version_ids, numbers, transitions, initiators, preset_ids,
           statuses, job_ids, inputs, workers, with_params, org_ids, provisioners, file_ids,
           stamps
      FROM unnest(seed_builds.id, seed_builds.workspace_id, seed_builds.template_version_id,
                  seed_builds.build_number, seed_builds.transition, seed_builds.initiator_id,
                  seed_builds.preset_id, seed_builds.job_status, seed_builds.created_at,
                  seed_builds.job_id, seed_builds.job_input, seed_builds.worker_id,
                  seed_builds.preset_parameters, seed_builds.organization_id,
                  seed_builds.provisioner, seed_builds.file_id)
          AS r (id, workspace_id, template_version_id, build_number, transition, initiator_id,
                preset_id, job_status, created_at, job_id, job_input, worker_id,
                preset_parameters, organization_id, provisioner, file_id);
    PERFORM pg_temp.seed_jobs(
        id => job_ids,
        organization_id => org_ids,
        initiator_id => initiators,
        status => statuses,
        input => inputs,
        created_at => stamps,
        provisioner => provisioners,
        file_id => file_ids,
        worker_id => workers
    );
    INSERT INTO workspace_builds (
        id, created_at, updated_at, workspace_id, template_version_id, build_number, transition,
        initiator_id, job_id, reason, template_version_preset_id
    )
    SELECT b.id, b.created_at, b.created_at, b.workspace_id, b.template_version_id,
           b.build_number, b.transition::workspace_transition, b.initiator_id, b.job_id,
           'initiator', b.preset_id
    FROM unnest(ids, stamps, workspace_ids, version_ids, numbers, transitions, initiators,
                job_ids, preset_ids)
        AS b (id, created_at, workspace_id, template_version_id, build_number, transition,
              initiator_id, job_id, preset_id);
    GET DIAGNOSTICS added = ROW_COUNT;
    INSERT INTO workspace_build_parameters (workspace_build_id, name, value)
    SELECT b.id, pp.name, pp.value
    FROM unnest(ids, preset_ids, with_params) AS b (id, preset_id, with_params)
    JOIN template_version_preset_parameters AS pp ON pp.template_version_preset_id = b.preset_id
    WHERE b.with_params;
    RETURN added;
END;
$fn$;

-- Agents, each on a resource of its own of the given job (a build's), created together with
-- the agent. Connection and start times follow the lifecycle state: none while 'created',
-- connected and started from 'starting' on, ready_at once it was ready.
CREATE OR REPLACE FUNCTION pg_temp.seed_agents(
    id              uuid[],
    job_id          uuid[],
    lifecycle_state text[]        DEFAULT NULL,  -- 'ready'
    name            text[]        DEFAULT NULL,  -- 'agent-' and the id's first 8 hex digits
                                                 -- (unique in a build, as Coder demands)
    parent_id       uuid[]        DEFAULT NULL,  -- none: a top-level agent; set: a sub-agent
    deleted         boolean[]     DEFAULT NULL,  -- false
    created_at      timestamptz[] DEFAULT NULL,  -- now()
    resource_name   text[]        DEFAULT NULL,  -- 'main'
    resource_type   text[]        DEFAULT NULL   -- 'docker_container'
) RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    ids          uuid[];
    resource_ids uuid[];
    job_ids      uuid[];
    states       text[];
    names        text[];
    parents      uuid[];
    deleted_     boolean[];
    stamps       timestamptz[];
    res_names    text[];
    res_types    text[];
    added        bigint;
BEGIN
    SELECT array_agg(r.id), array_agg(gen_random_uuid()), array_agg(r.job_id),
           array_agg(COALESCE(r.lifecycle_state, 'ready')),
           array_agg(COALESCE(r.name, 'agent-' || left(r.id::text, 8))), array_agg(r.parent_id),
           array_agg(COALESCE(r.deleted, false)), array_agg(COALESCE(r.created_at, now())),
           array_agg(COALESCE(r.resource_name, 'main')),
           array_agg(COALESCE(r.resource_type, 'docker_container'))
      INTO ids, resource_ids, job_ids, states, names, parents, deleted_, stamps, res_names,
           res_types
      FROM unnest(seed_agents.id, seed_agents.job_id, seed_agents.lifecycle_state,
                  seed_agents.name, seed_agents.parent_id, seed_agents.deleted,
                  seed_agents.created_at, seed_agents.resource_name, seed_agents.resource_type)
          AS r (id, job_id, lifecycle_state, name, parent_id, deleted, created_at,
                resource_name, resource_type);
    INSERT INTO workspace_resources (id, created_at, job_id, transition, type, name)
    SELECT r.id, r.created_at, r.job_id, 'start', r.type, r.name
    FROM unnest(resource_ids, stamps, job_ids, res_types, res_names)
        AS r (id, created_at, job_id, type, name);
    INSERT INTO workspace_agents (
        id, created_at, updated_at, name, resource_id, auth_token, architecture,
        operating_system, lifecycle_state, first_connected_at, last_connected_at, started_at,
        ready_at, parent_id, deleted
    )
    SELECT a.id, a.created_at, a.created_at, a.name, a.resource_id, gen_random_uuid(), 'amd64',
           'linux', a.state::workspace_agent_lifecycle_state,
           CASE WHEN a.state <> 'created' THEN a.created_at END,
           CASE WHEN a.state <> 'created' THEN a.created_at END,
           CASE WHEN a.state <> 'created' THEN a.created_at END,
           CASE WHEN a.state IN ('ready', 'shutting_down', 'shutdown_timeout', 'shutdown_error',
                                 'off')
               THEN a.created_at END,
           a.parent_id, a.deleted
    FROM unnest(ids, stamps, names, resource_ids, states, parents, deleted_)
        AS a (id, created_at, name, resource_id, state, parent_id, deleted);
    GET DIAGNOSTICS added = ROW_COUNT;
    RETURN added;
END;
$fn$;
