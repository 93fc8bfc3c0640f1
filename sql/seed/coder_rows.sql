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
-- SQL functions (cheaper than PL/pgSQL for a fleet's arrays), checked when created against the
-- columns every Coder release prebuildd supports has; PL/pgSQL where SQL cannot do the job
-- (raising an error) or a column is younger (seed_presets' last_invalidated_at, Coder v2.29:
-- PL/pgSQL resolves it only when a preset is given one).
--
-- Set-based: every argument is an array with one element per row. The arrays of one call are
-- read side by side by unnest() in a select list, which streams them (unnest(a, b) in FROM
-- would first copy each array into a tuplestore); the longest array sets the number of rows.
-- Row-by-row callers pass one-element arrays (sql/queries/seed.sql), a fleet passes
-- array_agg(...) over hundreds of thousands of rows. An argument left out, or a NULL element,
-- takes the default written next to it, except where NULL is itself a value Coder stores (said
-- so). Ids are the caller's; where two tables must agree on a default id (a build's job, an
-- agent's resource, a version's import job), it is derived from the row's own id
-- (seed_id_of), so no statement has to hand generated ids to the next.
--
-- Names are Coder's tables' own, unqualified: they resolve through the caller's search_path,
-- as Coder's own queries do.

-- The id of a row that belongs to `owner`: the same in every statement that needs it. A plain
-- immutable SELECT, so the planner inlines it.
CREATE OR REPLACE FUNCTION pg_temp.seed_id_of(what text, owner uuid) RETURNS uuid
LANGUAGE sql
IMMUTABLE
AS $fn$
    SELECT md5(what || ' of ' || owner::text)::uuid
$fn$;

-- ---------------------------------------------------------------------------------------------
-- Organizations and users
-- ---------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pg_temp.seed_organizations(
    id           uuid[],
    name         text[]    DEFAULT NULL,  -- 'org-' and the id's first 8 hex digits
    display_name text[]    DEFAULT NULL,  -- the name
    description  text[]    DEFAULT NULL,  -- ''
    is_default   boolean[] DEFAULT NULL   -- false (Coder allows one default organization)
) RETURNS void
LANGUAGE sql
AS $fn$
    INSERT INTO organizations (
        id, name, display_name, description, is_default, created_at, updated_at
    )
    SELECT r.id, o.name, COALESCE(r.display_name, o.name), COALESCE(r.description, ''),
           COALESCE(r.is_default, false), now(), now()
    FROM (
        SELECT unnest(seed_organizations.id) AS id,
               unnest(seed_organizations.name) AS name,
               unnest(seed_organizations.display_name) AS display_name,
               unnest(seed_organizations.description) AS description,
               unnest(seed_organizations.is_default) AS is_default
    ) AS r
    CROSS JOIN LATERAL (SELECT COALESCE(r.name, 'org-' || left(r.id::text, 8)) AS name) AS o;
$fn$;

-- Active users who log in with a password (never used: the hash is empty).
CREATE OR REPLACE FUNCTION pg_temp.seed_users(
    id         uuid[],
    username   text[]        DEFAULT NULL,  -- 'user-' and the id's first 8 hex digits
    email      text[]        DEFAULT NULL,  -- <username>@example.com
    name       text[]        DEFAULT NULL,  -- ''
    created_at timestamptz[] DEFAULT NULL   -- now()
) RETURNS void
LANGUAGE sql
AS $fn$
    INSERT INTO users (
        id, email, username, name, hashed_password, created_at, updated_at, status, login_type
    )
    SELECT r.id, COALESCE(r.email, u.username || '@example.com'), u.username,
           COALESCE(r.name, ''), ''::bytea, COALESCE(r.created_at, now()), now(), 'active',
           'password'
    FROM (
        SELECT unnest(seed_users.id) AS id,
               unnest(seed_users.username) AS username,
               unnest(seed_users.email) AS email,
               unnest(seed_users.name) AS name,
               unnest(seed_users.created_at) AS created_at
    ) AS r
    CROSS JOIN LATERAL (
        SELECT COALESCE(r.username, 'user-' || left(r.id::text, 8)) AS username
    ) AS u;
$fn$;

-- ---------------------------------------------------------------------------------------------
-- Provisioner jobs
-- ---------------------------------------------------------------------------------------------

-- Refuses a job status seed_jobs cannot write (PL/pgSQL: SQL cannot raise an error).
CREATE OR REPLACE FUNCTION pg_temp.seed_check_job_statuses(statuses text[]) RETURNS void
LANGUAGE plpgsql
AS $fn$
DECLARE
    unknown text;
BEGIN
    SELECT s INTO unknown
    FROM unnest(statuses) AS s
    WHERE s NOT IN ('pending', 'running', 'succeeded', 'failed', 'canceling', 'canceled')
    LIMIT 1;
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'seed_jobs: unknown job status %', unknown
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END;
$fn$;

-- A job's status is given as Coder derives it (provisioner_jobs.job_status, a generated
-- column) and written as the timestamps and error it is derived from: started 1 s after
-- creation (running, succeeded, failed, canceling), a cancel requested after 2 s (canceling,
-- canceled), completed after 3 s (succeeded, failed, canceled), an error when failed. A started
-- job has a worker. The last three arguments describe a build's job (seed_builds passes them).
CREATE OR REPLACE FUNCTION pg_temp.seed_jobs(
    id                  uuid[],                      -- NULL: a build's derived id, else new
    organization_id     uuid[],                      -- NULL: the workspace's
    initiator_id        uuid[],
    status              text[]        DEFAULT NULL,  -- 'succeeded'
    job_type            text[]        DEFAULT NULL,  -- 'workspace_build'
    input               jsonb[]       DEFAULT NULL,  -- {}; a build's job: more keys
    created_at          timestamptz[] DEFAULT NULL,  -- now()
    provisioner         text[]        DEFAULT NULL,  -- the workspace's template's, else terraform
    tags                jsonb[]       DEFAULT NULL,  -- an untagged provisioner's (organization)
    file_id             uuid[]        DEFAULT NULL,  -- the version's import job's, else new
    worker_id           uuid[]        DEFAULT NULL,  -- a new id once started; none before
    workspace_build_id  uuid[]        DEFAULT NULL,  -- the build the job runs (in its input)
    workspace_id        uuid[]        DEFAULT NULL,  -- that build's workspace
    template_version_id uuid[]        DEFAULT NULL   -- that build's version
) RETURNS void
LANGUAGE sql
AS $fn$
    SELECT pg_temp.seed_check_job_statuses(seed_jobs.status);
    INSERT INTO provisioner_jobs (
        id, created_at, updated_at, started_at, canceled_at, completed_at, error,
        organization_id, initiator_id, provisioner, storage_method, type, input, worker_id,
        file_id, tags
    )
    SELECT
        COALESCE(
            r.id,
            CASE WHEN r.workspace_build_id IS NOT NULL
                THEN pg_temp.seed_id_of('job', r.workspace_build_id) END,
            gen_random_uuid()
        ),
        j.at, j.at,
        CASE WHEN j.started THEN j.at + interval '1 second' END,
        CASE WHEN j.status IN ('canceling', 'canceled') THEN j.at + interval '2 seconds' END,
        CASE WHEN j.status IN ('succeeded', 'failed', 'canceled')
            THEN j.at + interval '3 seconds' END,
        CASE WHEN j.status = 'failed' THEN 'terraform apply failed' END,
        -- COALESCE evaluates a lookup only for the rows that need it.
        COALESCE(
            r.organization_id,
            (SELECT w.organization_id FROM workspaces AS w WHERE w.id = r.workspace_id)
        ),
        r.initiator_id,
        COALESCE(
            r.provisioner,
            (SELECT t.provisioner::text
             FROM workspaces AS w
             JOIN templates AS t ON t.id = w.template_id
             WHERE w.id = r.workspace_id),
            'terraform'
        )::provisioner_type,
        'file',
        COALESCE(r.job_type, 'workspace_build')::provisioner_job_type,
        CASE
            WHEN r.workspace_build_id IS NULL THEN COALESCE(r.input, '{}')
            WHEN r.input IS NULL
                THEN jsonb_build_object('workspace_build_id', r.workspace_build_id)
            ELSE jsonb_build_object('workspace_build_id', r.workspace_build_id) || r.input
        END,
        COALESCE(r.worker_id, CASE WHEN j.started THEN gen_random_uuid() END),
        -- What Coder's builder copies onto a build's job: the source archive of the version.
        COALESCE(
            r.file_id,
            (SELECT ij.file_id
             FROM template_versions AS v
             JOIN provisioner_jobs AS ij ON ij.id = v.job_id
             WHERE v.id = r.template_version_id),
            gen_random_uuid()
        ),
        COALESCE(r.tags, '{"scope": "organization", "owner": ""}')
    FROM (
        SELECT unnest(seed_jobs.id) AS id,
               unnest(seed_jobs.organization_id) AS organization_id,
               unnest(seed_jobs.initiator_id) AS initiator_id,
               unnest(seed_jobs.status) AS status,
               unnest(seed_jobs.job_type) AS job_type,
               unnest(seed_jobs.input) AS input,
               unnest(seed_jobs.created_at) AS created_at,
               unnest(seed_jobs.provisioner) AS provisioner,
               unnest(seed_jobs.tags) AS tags,
               unnest(seed_jobs.file_id) AS file_id,
               unnest(seed_jobs.worker_id) AS worker_id,
               unnest(seed_jobs.workspace_build_id) AS workspace_build_id,
               unnest(seed_jobs.workspace_id) AS workspace_id,
               unnest(seed_jobs.template_version_id) AS template_version_id
    ) AS r
    CROSS JOIN LATERAL (
        SELECT
            COALESCE(r.created_at, now()) AS at,
            COALESCE(r.status, 'succeeded') AS status,
            COALESCE(r.status, 'succeeded') IN ('running', 'succeeded', 'failed', 'canceling')
                AS started
    ) AS j;
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
) RETURNS void
LANGUAGE sql
AS $fn$
    INSERT INTO templates (
        id, created_at, updated_at, organization_id, deleted, name, display_name, provisioner,
        active_version_id, created_by, deprecated
    )
    SELECT r.id, COALESCE(r.created_at, now()), COALESCE(r.created_at, now()), r.organization_id,
           COALESCE(r.deleted, false), COALESCE(r.name, 'tpl-' || left(r.id::text, 8)),
           COALESCE(r.display_name, ''), COALESCE(r.provisioner, 'terraform')::provisioner_type,
           r.active_version_id, r.created_by, COALESCE(r.deprecated, '')
    FROM (
        SELECT unnest(seed_templates.id) AS id,
               unnest(seed_templates.organization_id) AS organization_id,
               unnest(seed_templates.created_by) AS created_by,
               unnest(seed_templates.active_version_id) AS active_version_id,
               unnest(seed_templates.name) AS name,
               unnest(seed_templates.display_name) AS display_name,
               unnest(seed_templates.provisioner) AS provisioner,
               unnest(seed_templates.deleted) AS deleted,
               unnest(seed_templates.deprecated) AS deprecated,
               unnest(seed_templates.created_at) AS created_at
    ) AS r;
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
    job_id          uuid[]        DEFAULT NULL,  -- the import job's: derived from the id
    import_job      boolean[]     DEFAULT NULL,  -- true; false: job_id points at no job (Coder
                                                 -- has no foreign key there)
    import_status   text[]        DEFAULT NULL,  -- the import job's status: 'succeeded'
    import_tags     jsonb[]       DEFAULT NULL,  -- the import job's tags: untagged
    file_id         uuid[]        DEFAULT NULL,  -- the import job's source archive: a new id
    organization_id uuid[]        DEFAULT NULL   -- the template's
) RETURNS void
LANGUAGE sql
AS $fn$
    SELECT pg_temp.seed_jobs(
        id => array_agg(COALESCE(r.job_id, pg_temp.seed_id_of('import job', r.id))),
        organization_id => array_agg(COALESCE(r.organization_id, t.organization_id)),
        initiator_id => array_agg(COALESCE(r.created_by, t.created_by)),
        status => array_agg(r.import_status),
        job_type => array_agg('template_version_import'::text),
        input => array_agg(jsonb_build_object('template_version_id', r.id)),
        created_at => array_agg(r.created_at),
        provisioner => array_agg(t.provisioner::text),
        tags => array_agg(r.import_tags),
        file_id => array_agg(r.file_id)
    )
    FROM (
        SELECT unnest(seed_versions.id) AS id,
               unnest(seed_versions.template_id) AS template_id,
               unnest(seed_versions.created_by) AS created_by,
               unnest(seed_versions.created_at) AS created_at,
               unnest(seed_versions.job_id) AS job_id,
               unnest(seed_versions.import_job) AS import_job,
               unnest(seed_versions.import_status) AS import_status,
               unnest(seed_versions.import_tags) AS import_tags,
               unnest(seed_versions.file_id) AS file_id,
               unnest(seed_versions.organization_id) AS organization_id
    ) AS r
    LEFT JOIN templates AS t ON t.id = r.template_id
    WHERE COALESCE(r.import_job, true);
    INSERT INTO template_versions (
        id, template_id, organization_id, created_at, updated_at, name, readme, job_id, created_by
    )
    SELECT r.id, r.template_id, COALESCE(r.organization_id, t.organization_id), v.at, v.at,
           COALESCE(r.name, 'v-' || left(r.id::text, 8)), '',
           COALESCE(r.job_id, pg_temp.seed_id_of('import job', r.id)),
           COALESCE(r.created_by, t.created_by)
    FROM (
        SELECT unnest(seed_versions.id) AS id,
               unnest(seed_versions.template_id) AS template_id,
               unnest(seed_versions.created_by) AS created_by,
               unnest(seed_versions.name) AS name,
               unnest(seed_versions.created_at) AS created_at,
               unnest(seed_versions.job_id) AS job_id,
               unnest(seed_versions.organization_id) AS organization_id
    ) AS r
    LEFT JOIN templates AS t ON t.id = r.template_id
    CROSS JOIN LATERAL (SELECT COALESCE(r.created_at, clock_timestamp()) AS at) AS v;
$fn$;

-- Presets of versions; their parameters and prebuild schedules are the next two functions.
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
) RETURNS void
LANGUAGE plpgsql
AS $fn$
BEGIN
    INSERT INTO template_version_presets (
        id, template_version_id, name, created_at, desired_instances, invalidate_after_secs,
        scheduling_timezone, prebuild_status, is_default
    )
    SELECT r.id, r.template_version_id, COALESCE(r.name, 'preset-' || left(r.id::text, 8)),
           COALESCE(r.created_at, now()), r.desired_instances, r.invalidate_after_secs,
           COALESCE(r.scheduling_timezone, ''),
           COALESCE(r.prebuild_status, 'healthy')::prebuild_status, COALESCE(r.is_default, false)
    FROM (
        SELECT unnest(seed_presets.id) AS id,
               unnest(seed_presets.template_version_id) AS template_version_id,
               unnest(seed_presets.desired_instances) AS desired_instances,
               unnest(seed_presets.name) AS name,
               unnest(seed_presets.invalidate_after_secs) AS invalidate_after_secs,
               unnest(seed_presets.scheduling_timezone) AS scheduling_timezone,
               unnest(seed_presets.prebuild_status) AS prebuild_status,
               unnest(seed_presets.is_default) AS is_default,
               unnest(seed_presets.created_at) AS created_at
    ) AS r;
    IF EXISTS (SELECT FROM unnest(seed_presets.last_invalidated_at) AS at WHERE at IS NOT NULL) THEN
        UPDATE template_version_presets AS p
        SET last_invalidated_at = r.last_invalidated_at
        FROM (
            SELECT unnest(seed_presets.id) AS id,
                   unnest(seed_presets.last_invalidated_at) AS last_invalidated_at
        ) AS r
        WHERE p.id = r.id
          AND r.last_invalidated_at IS NOT NULL;
    END IF;
END;
$fn$;

CREATE OR REPLACE FUNCTION pg_temp.seed_preset_parameters(
    preset_id uuid[],
    name      text[],
    value     text[]
) RETURNS void
LANGUAGE sql
AS $fn$
    INSERT INTO template_version_preset_parameters (template_version_preset_id, name, value)
    SELECT r.preset_id, r.name, r.value
    FROM (
        SELECT unnest(seed_preset_parameters.preset_id) AS preset_id,
               unnest(seed_preset_parameters.name) AS name,
               unnest(seed_preset_parameters.value) AS value
    ) AS r;
$fn$;

-- Prebuild schedules: at the times cron_expression covers, the preset wants desired_instances
-- (read in the preset's scheduling_timezone).
CREATE OR REPLACE FUNCTION pg_temp.seed_schedules(
    preset_id         uuid[],
    cron_expression   text[],
    desired_instances integer[],
    id                uuid[] DEFAULT NULL  -- a new id
) RETURNS void
LANGUAGE sql
AS $fn$
    INSERT INTO template_version_preset_prebuild_schedules (
        id, preset_id, cron_expression, desired_instances
    )
    SELECT COALESCE(r.id, gen_random_uuid()), r.preset_id, r.cron_expression,
           r.desired_instances
    FROM (
        SELECT unnest(seed_schedules.preset_id) AS preset_id,
               unnest(seed_schedules.cron_expression) AS cron_expression,
               unnest(seed_schedules.desired_instances) AS desired_instances,
               unnest(seed_schedules.id) AS id
    ) AS r;
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
) RETURNS void
LANGUAGE sql
AS $fn$
    INSERT INTO workspaces (
        id, created_at, updated_at, owner_id, organization_id, template_id, deleted, name,
        last_used_at
    )
    SELECT r.id, w.at, w.at, r.owner_id,
           COALESCE(r.organization_id,
                    (SELECT t.organization_id FROM templates AS t WHERE t.id = r.template_id)),
           r.template_id, COALESCE(r.deleted, false),
           COALESCE(r.name, 'ws-' || left(md5(r.id::text), 16)), w.at
    FROM (
        SELECT unnest(seed_workspaces.id) AS id,
               unnest(seed_workspaces.template_id) AS template_id,
               unnest(seed_workspaces.owner_id) AS owner_id,
               unnest(seed_workspaces.name) AS name,
               unnest(seed_workspaces.created_at) AS created_at,
               unnest(seed_workspaces.deleted) AS deleted,
               unnest(seed_workspaces.organization_id) AS organization_id
    ) AS r
    CROSS JOIN LATERAL (SELECT COALESCE(r.created_at, now()) AS at) AS w;
$fn$;

-- Builds with their jobs, as Coder's workspace builder writes them: a workspace_build job
-- created with the build (see seed_jobs for what it defaults to) and, for a build of a preset,
-- the preset's parameters as the build's parameters.
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
    job_id              uuid[]        DEFAULT NULL,  -- derived from the build's id
    job_input           jsonb[]       DEFAULT NULL,  -- more keys of the job's input
    worker_id           uuid[]        DEFAULT NULL,  -- seed_jobs' worker_id
    preset_parameters   boolean[]     DEFAULT NULL,  -- true: the preset's parameters are the
                                                     -- build's; false: none
    organization_id     uuid[]        DEFAULT NULL,  -- seed_jobs': the workspace's
    provisioner         text[]        DEFAULT NULL,  -- seed_jobs': the workspace's template's
    file_id             uuid[]        DEFAULT NULL   -- seed_jobs': the version's import job's
) RETURNS void
LANGUAGE sql
AS $fn$
    SELECT pg_temp.seed_jobs(
        id => seed_builds.job_id,
        organization_id => seed_builds.organization_id,
        initiator_id => seed_builds.initiator_id,
        status => seed_builds.job_status,
        input => seed_builds.job_input,
        created_at => seed_builds.created_at,
        provisioner => seed_builds.provisioner,
        file_id => seed_builds.file_id,
        worker_id => seed_builds.worker_id,
        workspace_build_id => seed_builds.id,
        workspace_id => seed_builds.workspace_id,
        template_version_id => seed_builds.template_version_id
    );
    INSERT INTO workspace_builds (
        id, created_at, updated_at, workspace_id, template_version_id, build_number, transition,
        initiator_id, job_id, reason, template_version_preset_id
    )
    SELECT r.id, COALESCE(r.created_at, now()), COALESCE(r.created_at, now()), r.workspace_id,
           r.template_version_id, r.build_number, r.transition::workspace_transition,
           r.initiator_id, COALESCE(r.job_id, pg_temp.seed_id_of('job', r.id)), 'initiator',
           r.preset_id
    FROM (
        SELECT unnest(seed_builds.id) AS id,
               unnest(seed_builds.workspace_id) AS workspace_id,
               unnest(seed_builds.template_version_id) AS template_version_id,
               unnest(seed_builds.build_number) AS build_number,
               unnest(seed_builds.transition) AS transition,
               unnest(seed_builds.initiator_id) AS initiator_id,
               unnest(seed_builds.preset_id) AS preset_id,
               unnest(seed_builds.created_at) AS created_at,
               unnest(seed_builds.job_id) AS job_id
    ) AS r;
    INSERT INTO workspace_build_parameters (workspace_build_id, name, value)
    SELECT r.id, pp.name, pp.value
    FROM (
        SELECT unnest(seed_builds.id) AS id,
               unnest(seed_builds.preset_id) AS preset_id,
               unnest(seed_builds.preset_parameters) AS preset_parameters
    ) AS r
    JOIN template_version_preset_parameters AS pp ON pp.template_version_preset_id = r.preset_id
    WHERE COALESCE(r.preset_parameters, true);
$fn$;

-- Agents, each on a resource of its own (created with it; its id, unless given, derived from
-- the agent's) of the given job, a build's. Connection and start times follow the lifecycle
-- state: none while 'created', connected and started from then on, ready_at once it was ready.
CREATE OR REPLACE FUNCTION pg_temp.seed_agents(
    id              uuid[],
    job_id          uuid[],
    lifecycle_state text[]        DEFAULT NULL,  -- 'ready'
    name            text[]        DEFAULT NULL,  -- 'agent-' and the id's first 8 hex digits
                                                 -- (unique in a build, as Coder demands)
    parent_id       uuid[]        DEFAULT NULL,  -- none: a top-level agent; set: a sub-agent
    deleted         boolean[]     DEFAULT NULL,  -- false
    created_at      timestamptz[] DEFAULT NULL,  -- now()
    resource_id     uuid[]        DEFAULT NULL   -- derived from the agent's id
) RETURNS void
LANGUAGE sql
AS $fn$
    INSERT INTO workspace_resources (id, created_at, job_id, transition, type, name)
    SELECT COALESCE(r.resource_id, pg_temp.seed_id_of('resource', r.id)),
           COALESCE(r.created_at, now()), r.job_id, 'start', 'docker_container', 'main'
    FROM (
        SELECT unnest(seed_agents.id) AS id,
               unnest(seed_agents.job_id) AS job_id,
               unnest(seed_agents.created_at) AS created_at,
               unnest(seed_agents.resource_id) AS resource_id
    ) AS r;
    INSERT INTO workspace_agents (
        id, created_at, updated_at, name, resource_id, auth_token, architecture,
        operating_system, lifecycle_state, first_connected_at, last_connected_at, started_at,
        ready_at, parent_id, deleted
    )
    SELECT r.id, a.at, a.at, COALESCE(r.name, 'agent-' || left(r.id::text, 8)),
           COALESCE(r.resource_id, pg_temp.seed_id_of('resource', r.id)), gen_random_uuid(),
           'amd64', 'linux',
           a.state::workspace_agent_lifecycle_state,
           CASE WHEN a.state <> 'created' THEN a.at END,
           CASE WHEN a.state <> 'created' THEN a.at END,
           CASE WHEN a.state <> 'created' THEN a.at END,
           CASE WHEN a.state IN ('ready', 'shutting_down', 'shutdown_timeout', 'shutdown_error',
                                 'off')
               THEN a.at END,
           r.parent_id, COALESCE(r.deleted, false)
    FROM (
        SELECT unnest(seed_agents.id) AS id,
               unnest(seed_agents.lifecycle_state) AS lifecycle_state,
               unnest(seed_agents.name) AS name,
               unnest(seed_agents.parent_id) AS parent_id,
               unnest(seed_agents.deleted) AS deleted,
               unnest(seed_agents.created_at) AS created_at,
               unnest(seed_agents.resource_id) AS resource_id
    ) AS r
    CROSS JOIN LATERAL (
        SELECT COALESCE(r.created_at, now()) AS at,
               COALESCE(r.lifecycle_state, 'ready') AS state
    ) AS a;
$fn$;
