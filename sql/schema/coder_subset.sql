-- The part of Coder's schema that prebuildd reads and writes, for databases that have no Coder.
--
-- Names, types, NOT NULL and defaults follow Coder's coderd/database/dump.sql so that a row
-- written here is a row Coder would accept, and so that every query prebuildd runs works
-- unchanged against a real Coder database. Columns that nothing in prebuildd reads or writes
-- are left out. `prebuildd migrate` applies this file only to a database without a
-- `templates` table; on a Coder database it verifies the same tables/columns instead
-- (REQUIRED_COLUMNS in service/prebuildd/migrate.py, kept in step with this file).
--
-- Constraint and index names are Coder's, so that ON CONFLICT clauses and error handling that
-- match on a constraint name behave the same here and on Coder.

-- ---------------------------------------------------------------------------------------------
-- Enumerations (labels and their order as in Coder)
-- ---------------------------------------------------------------------------------------------

CREATE TYPE login_type AS ENUM (
    'password', 'github', 'oidc', 'token', 'none', 'oauth2_provider_app'
);

CREATE TYPE user_status AS ENUM ('active', 'suspended', 'dormant');

CREATE TYPE automatic_updates AS ENUM ('always', 'never');

CREATE TYPE build_reason AS ENUM (
    'initiator', 'autostart', 'autostop', 'dormancy', 'failedstop', 'autodelete',
    'dashboard', 'cli', 'ssh_connection', 'vscode_connection', 'jetbrains_connection',
    'task_auto_pause', 'task_manual_pause', 'task_resume'
);

CREATE TYPE workspace_transition AS ENUM ('start', 'stop', 'delete');

-- Never stored by hand: provisioner_jobs.job_status is generated from the job's columns.
CREATE TYPE provisioner_job_status AS ENUM (
    'pending', 'running', 'succeeded', 'canceling', 'canceled', 'failed', 'unknown'
);

CREATE TYPE provisioner_job_type AS ENUM (
    'template_version_import', 'workspace_build', 'template_version_dry_run'
);

CREATE TYPE provisioner_type AS ENUM ('echo', 'terraform');

CREATE TYPE provisioner_storage_method AS ENUM ('file');

CREATE TYPE prebuild_status AS ENUM ('healthy', 'hard_limited', 'validation_failed');

CREATE TYPE parameter_form_type AS ENUM (
    '', 'error', 'radio', 'dropdown', 'input', 'textarea', 'slider', 'checkbox', 'switch',
    'tag-select', 'multi-select'
);

CREATE TYPE workspace_agent_lifecycle_state AS ENUM (
    'created', 'starting', 'start_timeout', 'start_error', 'ready',
    'shutting_down', 'shutdown_timeout', 'shutdown_error', 'off'
);

CREATE TYPE notification_method AS ENUM ('smtp', 'webhook', 'inbox');

CREATE TYPE notification_message_status AS ENUM (
    'pending', 'leased', 'sent', 'permanent_failure', 'temporary_failure', 'unknown', 'inhibited'
);

CREATE TYPE notification_template_kind AS ENUM ('system', 'custom');

-- ---------------------------------------------------------------------------------------------
-- Organizations and users
-- ---------------------------------------------------------------------------------------------

CREATE TABLE organizations (
    id           uuid        NOT NULL,
    name         text        NOT NULL,
    description  text        NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    is_default   boolean     NOT NULL DEFAULT false,
    display_name text        NOT NULL,
    icon         text        NOT NULL DEFAULT '',
    deleted      boolean     NOT NULL DEFAULT false,
    CONSTRAINT organizations_pkey PRIMARY KEY (id)
);

CREATE UNIQUE INDEX idx_organization_name_lower
    ON organizations (lower(name)) WHERE deleted = false;
CREATE UNIQUE INDEX organizations_single_default_org
    ON organizations (is_default) WHERE is_default = true;

CREATE TABLE users (
    id                           uuid        NOT NULL,
    email                        text        NOT NULL,
    username                     text        NOT NULL DEFAULT '',
    hashed_password              bytea       NOT NULL,
    created_at                   timestamptz NOT NULL,
    updated_at                   timestamptz NOT NULL,
    status                       user_status NOT NULL DEFAULT 'dormant',
    rbac_roles                   text[]      NOT NULL DEFAULT '{}',
    login_type                   login_type  NOT NULL DEFAULT 'password',
    avatar_url                   text        NOT NULL DEFAULT '',
    deleted                      boolean     NOT NULL DEFAULT false,
    -- Coder's one column "without time zone"; kept as is for type compatibility.
    last_seen_at                 timestamp   NOT NULL DEFAULT '0001-01-01 00:00:00',
    quiet_hours_schedule         text        NOT NULL DEFAULT '',
    name                         text        NOT NULL DEFAULT '',
    github_com_user_id           bigint,
    hashed_one_time_passcode     bytea,
    one_time_passcode_expires_at timestamptz,
    is_system                    boolean     NOT NULL DEFAULT false,
    is_service_account           boolean     NOT NULL DEFAULT false,
    CONSTRAINT users_pkey PRIMARY KEY (id),
    CONSTRAINT users_username_min_length CHECK (length(username) >= 1),
    -- Only service accounts may have an empty e-mail address, and they must have one.
    CONSTRAINT users_email_not_empty CHECK ((is_service_account = true) = (email = '')),
    CONSTRAINT users_service_account_login_type
        CHECK (is_service_account = false OR login_type = 'none'),
    CONSTRAINT one_time_passcode_set CHECK (
        (hashed_one_time_passcode IS NULL) = (one_time_passcode_expires_at IS NULL)
    )
);

CREATE UNIQUE INDEX idx_users_email
    ON users (email) WHERE deleted = false AND email <> '';
CREATE UNIQUE INDEX idx_users_username
    ON users (username) WHERE deleted = false;
CREATE UNIQUE INDEX users_email_lower_idx
    ON users (lower(email)) WHERE deleted = false AND email <> '';
CREATE UNIQUE INDEX users_username_lower_idx
    ON users (lower(username)) WHERE deleted = false;

-- The system user that owns unclaimed prebuilt workspaces; the id is fixed by Coder.
INSERT INTO users (
    id, email, username, name, hashed_password, created_at, updated_at,
    status, rbac_roles, login_type, is_system
) VALUES (
    'c42fdf75-3097-471c-8c33-fb52454d81c0', 'prebuilds@system', 'prebuilds', 'Prebuilds Owner',
    'none'::bytea, now(), now(), 'active', '{}', 'none', true
);

CREATE TABLE site_configs (
    key   varchar(256) NOT NULL,
    value text         NOT NULL,
    CONSTRAINT site_configs_key_key UNIQUE (key)
);

-- Organization-level roles (organization-admin, organization-template-admin, ...): the
-- hard-limit notice also reaches the admins of the template's organization.
CREATE TABLE organization_members (
    user_id         uuid        NOT NULL,
    organization_id uuid        NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    roles           text[]      NOT NULL DEFAULT '{}',
    CONSTRAINT organization_members_pkey PRIMARY KEY (organization_id, user_id),
    CONSTRAINT organization_members_organization_id_uuid_fkey FOREIGN KEY (organization_id)
        REFERENCES organizations (id) ON DELETE CASCADE,
    CONSTRAINT organization_members_user_id_uuid_fkey FOREIGN KEY (user_id)
        REFERENCES users (id) ON DELETE CASCADE
);

-- ---------------------------------------------------------------------------------------------
-- Templates, versions, presets
-- ---------------------------------------------------------------------------------------------

CREATE TABLE templates (
    id                                uuid             NOT NULL,
    created_at                        timestamptz      NOT NULL,
    updated_at                        timestamptz      NOT NULL,
    organization_id                   uuid             NOT NULL,
    deleted                           boolean          NOT NULL DEFAULT false,
    name                              varchar(64)      NOT NULL,
    provisioner                       provisioner_type NOT NULL,
    -- No foreign key, as in Coder: a template and its first version reference each other.
    active_version_id                 uuid             NOT NULL,
    description                       varchar(128)     NOT NULL DEFAULT '',
    default_ttl                       bigint           NOT NULL DEFAULT 604800000000000,
    created_by                        uuid             NOT NULL,
    icon                              varchar(256)     NOT NULL DEFAULT '',
    user_acl                          jsonb            NOT NULL DEFAULT '{}',
    group_acl                         jsonb            NOT NULL DEFAULT '{}',
    display_name                      varchar(64)      NOT NULL DEFAULT '',
    allow_user_cancel_workspace_jobs  boolean          NOT NULL DEFAULT true,
    allow_user_autostart              boolean          NOT NULL DEFAULT true,
    allow_user_autostop               boolean          NOT NULL DEFAULT true,
    failure_ttl                       bigint           NOT NULL DEFAULT 0,
    time_til_dormant                  bigint           NOT NULL DEFAULT 0,
    time_til_dormant_autodelete       bigint           NOT NULL DEFAULT 0,
    autostop_requirement_days_of_week smallint         NOT NULL DEFAULT 0,
    autostop_requirement_weeks        bigint           NOT NULL DEFAULT 0,
    autostart_block_days_of_week      smallint         NOT NULL DEFAULT 0,
    require_active_version            boolean          NOT NULL DEFAULT false,
    -- Non-empty means deprecated (the text is the message shown to users).
    deprecated                        text             NOT NULL DEFAULT '',
    activity_bump                     bigint           NOT NULL DEFAULT 3600000000000,
    use_classic_parameter_flow        boolean          NOT NULL DEFAULT false,
    disable_module_cache              boolean          NOT NULL DEFAULT false,
    CONSTRAINT templates_pkey PRIMARY KEY (id),
    CONSTRAINT templates_organization_id_fkey FOREIGN KEY (organization_id)
        REFERENCES organizations (id) ON DELETE CASCADE,
    CONSTRAINT templates_created_by_fkey FOREIGN KEY (created_by)
        REFERENCES users (id) ON DELETE RESTRICT
);

CREATE UNIQUE INDEX templates_organization_id_name_idx
    ON templates (organization_id, lower(name::text)) WHERE deleted = false;

CREATE TABLE template_versions (
    id                      uuid          NOT NULL,
    template_id             uuid,
    organization_id         uuid          NOT NULL,
    created_at              timestamptz   NOT NULL,
    updated_at              timestamptz   NOT NULL,
    name                    varchar(64)   NOT NULL,
    readme                  varchar(1048576) NOT NULL,
    -- The version's import job; no foreign key in Coder either.
    job_id                  uuid          NOT NULL,
    created_by              uuid          NOT NULL,
    external_auth_providers jsonb         NOT NULL DEFAULT '[]',
    message                 varchar(1048576) NOT NULL DEFAULT '',
    archived                boolean       NOT NULL DEFAULT false,
    source_example_id       text,
    has_ai_task             boolean,
    has_external_agent      boolean,
    CONSTRAINT template_versions_pkey PRIMARY KEY (id),
    CONSTRAINT template_versions_template_id_name_key UNIQUE (template_id, name),
    CONSTRAINT template_versions_template_id_fkey FOREIGN KEY (template_id)
        REFERENCES templates (id) ON DELETE CASCADE,
    CONSTRAINT template_versions_organization_id_fkey FOREIGN KEY (organization_id)
        REFERENCES organizations (id) ON DELETE CASCADE,
    CONSTRAINT template_versions_created_by_fkey FOREIGN KEY (created_by)
        REFERENCES users (id) ON DELETE RESTRICT
);

CREATE INDEX idx_template_versions_has_ai_task ON template_versions (has_ai_task);

-- The parameters a version declares (its coder_parameter data sources, as imported), against
-- which Coder's builder checks a build's values.
CREATE TABLE template_version_parameters (
    template_version_id  uuid                NOT NULL,
    name                 text                NOT NULL,
    description          text                NOT NULL,
    type                 text                NOT NULL,
    mutable              boolean             NOT NULL,
    default_value        text                NOT NULL,
    icon                 text                NOT NULL,
    -- A JSON list of {"name", "description", "value", "icon"}; an empty value is left out.
    options              jsonb               NOT NULL DEFAULT '[]'::jsonb,
    validation_regex     text                NOT NULL,
    validation_min       integer,
    validation_max       integer,
    validation_error     text                NOT NULL DEFAULT '',
    validation_monotonic text                NOT NULL DEFAULT '',
    required             boolean             NOT NULL DEFAULT true,
    display_name         text                NOT NULL DEFAULT '',
    display_order        integer             NOT NULL DEFAULT 0,
    ephemeral            boolean             NOT NULL DEFAULT false,
    form_type            parameter_form_type NOT NULL DEFAULT '',
    CONSTRAINT validation_monotonic_order
        CHECK (validation_monotonic IN ('increasing', 'decreasing', '')),
    CONSTRAINT template_version_parameters_template_version_id_name_key
        UNIQUE (template_version_id, name),
    CONSTRAINT template_version_parameters_template_version_id_fkey
        FOREIGN KEY (template_version_id) REFERENCES template_versions (id) ON DELETE CASCADE
);

-- A version's coder_workspace_tags: each key with the source text of its value expression,
-- evaluated by Coder's builder for every build.
CREATE TABLE template_version_workspace_tags (
    template_version_id uuid NOT NULL,
    key                 text NOT NULL,
    value               text NOT NULL,
    CONSTRAINT template_version_workspace_tags_template_version_id_key_key
        UNIQUE (template_version_id, key),
    CONSTRAINT template_version_workspace_tags_template_version_id_fkey
        FOREIGN KEY (template_version_id) REFERENCES template_versions (id) ON DELETE CASCADE
);

CREATE TABLE template_version_presets (
    id                    uuid            NOT NULL DEFAULT gen_random_uuid(),
    template_version_id   uuid            NOT NULL,
    name                  text            NOT NULL,
    created_at            timestamptz     NOT NULL DEFAULT CURRENT_TIMESTAMP,
    -- NULL: the preset has no prebuilds.
    desired_instances     integer,
    invalidate_after_secs integer                  DEFAULT 0,
    prebuild_status       prebuild_status NOT NULL DEFAULT 'healthy',
    -- IANA zone in which the preset's schedules are read; '' means UTC.
    scheduling_timezone   text            NOT NULL DEFAULT '',
    is_default            boolean         NOT NULL DEFAULT false,
    description           varchar(128)    NOT NULL DEFAULT '',
    icon                  varchar(256)    NOT NULL DEFAULT '',
    last_invalidated_at   timestamptz,
    CONSTRAINT template_version_presets_pkey PRIMARY KEY (id),
    CONSTRAINT template_version_presets_template_version_id_fkey FOREIGN KEY (template_version_id)
        REFERENCES template_versions (id) ON DELETE CASCADE
);

CREATE UNIQUE INDEX idx_template_version_presets_default
    ON template_version_presets (template_version_id) WHERE is_default = true;
CREATE UNIQUE INDEX idx_unique_preset_name
    ON template_version_presets (name, template_version_id);

CREATE TABLE template_version_preset_parameters (
    id                         uuid NOT NULL DEFAULT gen_random_uuid(),
    template_version_preset_id uuid NOT NULL,
    name                       text NOT NULL,
    value                      text NOT NULL,
    CONSTRAINT template_version_preset_parameters_pkey PRIMARY KEY (id),
    -- Coder's name, truncated by PostgreSQL's 63-byte limit.
    CONSTRAINT template_version_preset_paramet_template_version_preset_id_fkey
        FOREIGN KEY (template_version_preset_id)
        REFERENCES template_version_presets (id) ON DELETE CASCADE
);

CREATE TABLE template_version_preset_prebuild_schedules (
    id                uuid    NOT NULL DEFAULT gen_random_uuid(),
    preset_id         uuid    NOT NULL,
    cron_expression   text    NOT NULL,
    desired_instances integer NOT NULL,
    CONSTRAINT template_version_preset_prebuild_schedules_pkey PRIMARY KEY (id),
    CONSTRAINT template_version_preset_prebuild_schedules_preset_id_fkey FOREIGN KEY (preset_id)
        REFERENCES template_version_presets (id) ON DELETE CASCADE
);

-- ---------------------------------------------------------------------------------------------
-- Provisioner jobs
-- ---------------------------------------------------------------------------------------------

CREATE TABLE provisioner_jobs (
    id              uuid                       NOT NULL,
    created_at      timestamptz                NOT NULL,
    updated_at      timestamptz                NOT NULL,
    started_at      timestamptz,
    canceled_at     timestamptz,
    completed_at    timestamptz,
    error           text,
    organization_id uuid                       NOT NULL,
    initiator_id    uuid                       NOT NULL,
    provisioner     provisioner_type           NOT NULL,
    storage_method  provisioner_storage_method NOT NULL,
    type            provisioner_job_type       NOT NULL,
    input           jsonb                      NOT NULL,
    worker_id       uuid,
    -- The template's source archive (Coder's `files` table, not part of this subset).
    file_id         uuid                       NOT NULL,
    tags            jsonb                      NOT NULL DEFAULT '{"scope": "organization"}',
    error_code      text,
    trace_metadata  jsonb,
    -- Coder's derivation, branch for branch. A finished job is failed when it carries a
    -- non-empty error, else canceled when a cancel was requested, else succeeded. An
    -- unfinished job is failed on a non-empty error, canceling once a cancel was requested,
    -- pending until started, running after. NULL and '' errors both count as "no error"
    -- (`error <> ''` is NULL, not true, for a NULL error).
    job_status      provisioner_job_status     NOT NULL GENERATED ALWAYS AS (
        CASE
            WHEN completed_at IS NOT NULL THEN
                CASE
                    WHEN error <> '' THEN 'failed'::provisioner_job_status
                    WHEN canceled_at IS NOT NULL THEN 'canceled'::provisioner_job_status
                    ELSE 'succeeded'::provisioner_job_status
                END
            ELSE
                CASE
                    WHEN error <> '' THEN 'failed'::provisioner_job_status
                    WHEN canceled_at IS NOT NULL THEN 'canceling'::provisioner_job_status
                    WHEN started_at IS NULL THEN 'pending'::provisioner_job_status
                    ELSE 'running'::provisioner_job_status
                END
        END
    ) STORED,
    logs_length     integer                    NOT NULL DEFAULT 0,
    logs_overflowed boolean                    NOT NULL DEFAULT false,
    CONSTRAINT provisioner_jobs_pkey PRIMARY KEY (id),
    CONSTRAINT max_provisioner_logs_length CHECK (logs_length <= 1048576),
    CONSTRAINT provisioner_jobs_organization_id_fkey FOREIGN KEY (organization_id)
        REFERENCES organizations (id) ON DELETE CASCADE
);

CREATE INDEX idx_provisioner_jobs_status ON provisioner_jobs (job_status);
CREATE INDEX provisioner_jobs_started_at_idx
    ON provisioner_jobs (started_at) WHERE started_at IS NULL;
CREATE INDEX provisioner_jobs_worker_id_organization_id_completed_at_idx
    ON provisioner_jobs (worker_id, organization_id, completed_at DESC);

-- ---------------------------------------------------------------------------------------------
-- Workspaces and builds
-- ---------------------------------------------------------------------------------------------

CREATE TABLE workspaces (
    id                 uuid              NOT NULL,
    created_at         timestamptz       NOT NULL,
    updated_at         timestamptz       NOT NULL,
    owner_id           uuid              NOT NULL,
    organization_id    uuid              NOT NULL,
    template_id        uuid              NOT NULL,
    deleted            boolean           NOT NULL DEFAULT false,
    name               varchar(64)       NOT NULL,
    autostart_schedule text,
    ttl                bigint,
    last_used_at       timestamptz       NOT NULL DEFAULT '0001-01-01 00:00:00+00',
    dormant_at         timestamptz,
    deleting_at        timestamptz,
    automatic_updates  automatic_updates NOT NULL DEFAULT 'never',
    favorite           boolean           NOT NULL DEFAULT false,
    next_start_at      timestamptz,
    group_acl          jsonb             NOT NULL DEFAULT '{}',
    user_acl           jsonb             NOT NULL DEFAULT '{}',
    CONSTRAINT workspaces_pkey PRIMARY KEY (id),
    CONSTRAINT group_acl_is_object CHECK (jsonb_typeof(group_acl) = 'object'),
    CONSTRAINT user_acl_is_object CHECK (jsonb_typeof(user_acl) = 'object'),
    CONSTRAINT workspaces_organization_id_fkey FOREIGN KEY (organization_id)
        REFERENCES organizations (id) ON DELETE RESTRICT,
    CONSTRAINT workspaces_owner_id_fkey FOREIGN KEY (owner_id)
        REFERENCES users (id) ON DELETE RESTRICT,
    CONSTRAINT workspaces_template_id_fkey FOREIGN KEY (template_id)
        REFERENCES templates (id) ON DELETE RESTRICT
);

CREATE INDEX workspace_next_start_at_idx ON workspaces (next_start_at) WHERE deleted = false;
CREATE INDEX workspace_template_id_idx ON workspaces (template_id) WHERE deleted = false;
CREATE UNIQUE INDEX workspaces_owner_id_lower_idx
    ON workspaces (owner_id, lower(name::text)) WHERE deleted = false;

CREATE TABLE workspace_builds (
    id                         uuid                 NOT NULL,
    created_at                 timestamptz          NOT NULL,
    updated_at                 timestamptz          NOT NULL,
    workspace_id               uuid                 NOT NULL,
    template_version_id        uuid                 NOT NULL,
    build_number               integer              NOT NULL,
    transition                 workspace_transition NOT NULL,
    -- No foreign key in Coder: builds outlive their initiators.
    initiator_id               uuid                 NOT NULL,
    provisioner_state          bytea,
    job_id                     uuid                 NOT NULL,
    deadline                   timestamptz          NOT NULL DEFAULT '0001-01-01 00:00:00+00',
    reason                     build_reason         NOT NULL DEFAULT 'initiator',
    daily_cost                 integer              NOT NULL DEFAULT 0,
    max_deadline               timestamptz          NOT NULL DEFAULT '0001-01-01 00:00:00+00',
    template_version_preset_id uuid,
    has_ai_task                boolean,
    has_external_agent         boolean,
    CONSTRAINT workspace_builds_pkey PRIMARY KEY (id),
    CONSTRAINT workspace_builds_job_id_key UNIQUE (job_id),
    CONSTRAINT workspace_builds_workspace_id_build_number_key UNIQUE (workspace_id, build_number),
    -- The zero instant means "no deadline"; a real deadline never passes the max deadline.
    CONSTRAINT workspace_builds_deadline_below_max_deadline CHECK (
        max_deadline = '0001-01-01 00:00:00+00'
        OR (deadline <> '0001-01-01 00:00:00+00' AND deadline <= max_deadline)
    ),
    CONSTRAINT workspace_builds_job_id_fkey FOREIGN KEY (job_id)
        REFERENCES provisioner_jobs (id) ON DELETE CASCADE,
    CONSTRAINT workspace_builds_template_version_id_fkey FOREIGN KEY (template_version_id)
        REFERENCES template_versions (id) ON DELETE CASCADE,
    CONSTRAINT workspace_builds_template_version_preset_id_fkey
        FOREIGN KEY (template_version_preset_id)
        REFERENCES template_version_presets (id) ON DELETE SET NULL,
    CONSTRAINT workspace_builds_workspace_id_fkey FOREIGN KEY (workspace_id)
        REFERENCES workspaces (id) ON DELETE CASCADE
);

CREATE INDEX idx_workspace_builds_initiator_id ON workspace_builds (initiator_id);

CREATE TABLE workspace_build_parameters (
    workspace_build_id uuid NOT NULL,
    name               text NOT NULL,
    value              text NOT NULL,
    CONSTRAINT workspace_build_parameters_workspace_build_id_name_key
        UNIQUE (workspace_build_id, name),
    CONSTRAINT workspace_build_parameters_workspace_build_id_fkey FOREIGN KEY (workspace_build_id)
        REFERENCES workspace_builds (id) ON DELETE CASCADE
);

-- ---------------------------------------------------------------------------------------------
-- Resources and agents (what a build produced)
-- ---------------------------------------------------------------------------------------------

CREATE TABLE workspace_resources (
    id            uuid                 NOT NULL,
    created_at    timestamptz          NOT NULL,
    job_id        uuid                 NOT NULL,
    transition    workspace_transition NOT NULL,
    type          varchar(192)         NOT NULL,
    name          varchar(64)          NOT NULL,
    hide          boolean              NOT NULL DEFAULT false,
    icon          varchar(256)         NOT NULL DEFAULT '',
    instance_type varchar(256),
    daily_cost    integer              NOT NULL DEFAULT 0,
    module_path   text,
    CONSTRAINT workspace_resources_pkey PRIMARY KEY (id),
    CONSTRAINT workspace_resources_job_id_fkey FOREIGN KEY (job_id)
        REFERENCES provisioner_jobs (id) ON DELETE CASCADE
);

CREATE INDEX workspace_resources_job_id_idx ON workspace_resources (job_id);

CREATE TABLE workspace_agents (
    id                         uuid                            NOT NULL,
    created_at                 timestamptz                     NOT NULL,
    updated_at                 timestamptz                     NOT NULL,
    name                       varchar(64)                     NOT NULL,
    first_connected_at         timestamptz,
    last_connected_at          timestamptz,
    disconnected_at            timestamptz,
    resource_id                uuid                            NOT NULL,
    auth_token                 uuid                            NOT NULL,
    auth_instance_id           varchar,
    architecture               varchar(64)                     NOT NULL,
    environment_variables      jsonb,
    operating_system           varchar(64)                     NOT NULL,
    instance_metadata          jsonb,
    resource_metadata          jsonb,
    directory                  varchar(4096)                   NOT NULL DEFAULT '',
    version                    text                            NOT NULL DEFAULT '',
    last_connected_replica_id  uuid,
    connection_timeout_seconds integer                         NOT NULL DEFAULT 0,
    troubleshooting_url        text                            NOT NULL DEFAULT '',
    motd_file                  text                            NOT NULL DEFAULT '',
    lifecycle_state            workspace_agent_lifecycle_state NOT NULL DEFAULT 'created',
    expanded_directory         varchar(4096)                   NOT NULL DEFAULT '',
    logs_length                integer                         NOT NULL DEFAULT 0,
    logs_overflowed            boolean                         NOT NULL DEFAULT false,
    started_at                 timestamptz,
    ready_at                   timestamptz,
    api_version                text                            NOT NULL DEFAULT '',
    display_order              integer                         NOT NULL DEFAULT 0,
    -- Set for sub-agents (e.g. dev containers); NULL for a build's top-level agents.
    parent_id                  uuid,
    deleted                    boolean                         NOT NULL DEFAULT false,
    CONSTRAINT workspace_agents_pkey PRIMARY KEY (id),
    CONSTRAINT max_logs_length CHECK (logs_length <= 1048576),
    CONSTRAINT workspace_agents_parent_id_fkey FOREIGN KEY (parent_id)
        REFERENCES workspace_agents (id) ON DELETE CASCADE,
    CONSTRAINT workspace_agents_resource_id_fkey FOREIGN KEY (resource_id)
        REFERENCES workspace_resources (id) ON DELETE CASCADE
);

CREATE INDEX workspace_agents_auth_instance_id_deleted_idx
    ON workspace_agents (auth_instance_id, deleted);
CREATE INDEX workspace_agents_auth_token_idx ON workspace_agents (auth_token);
CREATE INDEX workspace_agents_resource_id_idx ON workspace_agents (resource_id);

-- Coder enforces unique agent names per build with a trigger (old rows may violate it, so it
-- is not a constraint). Kept here so that a simulated provisioner breaking the rule fails in
-- tests as it would on Coder.
CREATE FUNCTION check_workspace_agent_name_unique() RETURNS trigger
    LANGUAGE plpgsql
AS $fn$
DECLARE
    build_id  uuid;
    same_name int;
BEGIN
    SELECT b.id INTO build_id
    FROM workspace_resources r
    JOIN workspace_builds b ON b.job_id = r.job_id
    WHERE r.id = NEW.resource_id;

    IF build_id IS NULL THEN
        RETURN NEW;
    END IF;

    SELECT count(*) INTO same_name
    FROM workspace_agents a
    JOIN workspace_resources r ON r.id = a.resource_id
    JOIN workspace_builds b ON b.job_id = r.job_id
    WHERE b.id = build_id
      AND a.name = NEW.name
      AND a.id <> NEW.id
      AND NOT a.deleted;

    IF same_name > 0 THEN
        RAISE EXCEPTION 'workspace agent name "%" already exists in this workspace build', NEW.name
            USING ERRCODE = 'unique_violation';
    END IF;
    RETURN NEW;
END;
$fn$;

CREATE TRIGGER workspace_agent_name_unique_trigger
    BEFORE INSERT OR UPDATE OF name, resource_id ON workspace_agents
    FOR EACH ROW EXECUTE FUNCTION check_workspace_agent_name_unique();

-- ---------------------------------------------------------------------------------------------
-- Notifications (the hard failure limit notifies template admins)
-- ---------------------------------------------------------------------------------------------

CREATE TABLE notification_templates (
    id                 uuid                       NOT NULL,
    name               text                       NOT NULL,
    title_template     text                       NOT NULL,
    body_template      text                       NOT NULL,
    actions            jsonb,
    "group"            text,
    method             notification_method,
    kind               notification_template_kind NOT NULL DEFAULT 'system',
    enabled_by_default boolean                    NOT NULL DEFAULT true,
    CONSTRAINT notification_templates_pkey PRIMARY KEY (id),
    CONSTRAINT notification_templates_name_key UNIQUE (name)
);

CREATE TABLE notification_messages (
    id                       uuid                        NOT NULL,
    notification_template_id uuid                        NOT NULL,
    user_id                  uuid                        NOT NULL,
    method                   notification_method         NOT NULL,
    status                   notification_message_status NOT NULL DEFAULT 'pending',
    status_reason            text,
    created_by               text                        NOT NULL,
    payload                  jsonb                       NOT NULL,
    attempt_count            integer                              DEFAULT 0,
    targets                  uuid[],
    created_at               timestamptz                 NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at               timestamptz,
    leased_until             timestamptz,
    next_retry_after         timestamptz,
    queued_seconds           double precision,
    -- Filled by the trigger below: one message per template, user, method, payload, targets
    -- and UTC day.
    dedupe_hash              text,
    CONSTRAINT notification_messages_pkey PRIMARY KEY (id),
    CONSTRAINT notification_messages_notification_template_id_fkey
        FOREIGN KEY (notification_template_id)
        REFERENCES notification_templates (id) ON DELETE CASCADE,
    CONSTRAINT notification_messages_user_id_fkey FOREIGN KEY (user_id)
        REFERENCES users (id) ON DELETE CASCADE
);

CREATE INDEX idx_notification_messages_status ON notification_messages (status);
CREATE UNIQUE INDEX notification_messages_dedupe_hash_idx ON notification_messages (dedupe_hash);

CREATE FUNCTION compute_notification_message_dedupe_hash() RETURNS trigger
    LANGUAGE plpgsql
AS $fn$
BEGIN
    NEW.dedupe_hash := md5(concat_ws(
        ':',
        NEW.notification_template_id,
        NEW.user_id,
        NEW.method,
        NEW.payload::text,
        array_to_string(NEW.targets, ','),
        date_trunc('day', NEW.created_at AT TIME ZONE 'UTC')::text
    ));
    RETURN NEW;
END;
$fn$;

CREATE TRIGGER update_notification_message_dedupe_hash
    BEFORE INSERT OR UPDATE ON notification_messages
    FOR EACH ROW EXECUTE FUNCTION compute_notification_message_dedupe_hash();

-- A user's choice per notification template (no row: the template's enabled_by_default).
CREATE TABLE notification_preferences (
    user_id                  uuid        NOT NULL,
    notification_template_id uuid        NOT NULL,
    disabled                 boolean     NOT NULL DEFAULT false,
    created_at               timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at               timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT notification_preferences_pkey PRIMARY KEY (user_id, notification_template_id),
    CONSTRAINT notification_preferences_notification_template_id_fkey
        FOREIGN KEY (notification_template_id)
        REFERENCES notification_templates (id) ON DELETE CASCADE,
    CONSTRAINT notification_preferences_user_id_fkey FOREIGN KEY (user_id)
        REFERENCES users (id) ON DELETE CASCADE
);

-- Coder refuses to queue a message its recipient would not get: one the user turned off, or
-- of a template that is off by default and that the user did not turn on. Same trigger name
-- as Coder's, so that a writer meets the same refusal here as on Coder.
CREATE FUNCTION inhibit_enqueue_if_disabled() RETURNS trigger
    LANGUAGE plpgsql
AS $fn$
BEGIN
    IF EXISTS (
        SELECT 1
        FROM notification_templates AS t
        LEFT JOIN notification_preferences AS pref
            ON pref.notification_template_id = t.id AND pref.user_id = NEW.user_id
        WHERE t.id = NEW.notification_template_id
          AND (pref.disabled OR (NOT t.enabled_by_default AND pref.user_id IS NULL))
    ) THEN
        RAISE EXCEPTION 'cannot enqueue message: notification is not enabled';
    END IF;
    RETURN NEW;
END;
$fn$;

CREATE TRIGGER inhibit_enqueue_if_disabled
    BEFORE INSERT ON notification_messages
    FOR EACH ROW EXECUTE FUNCTION inhibit_enqueue_if_disabled();

-- Coder ships this template row with a migration; the id is Coder's.
INSERT INTO notification_templates (id, name, title_template, body_template, "group", actions)
VALUES (
    '414d9331-c1fc-4761-b40c-d1f4702279eb',
    'Prebuild Failure Limit Reached',
    'There is a problem creating prebuilt workspaces',
    E'Prebuilt workspaces of template **{{ .Labels.template }}**, preset '
    '**{{ .Labels.preset }}**, failed too many times in a row; no more are being created.\n\n'
    'Fix the cause and publish a new template version to resume.',
    'Template Events',
    '[]'
);

-- ---------------------------------------------------------------------------------------------
-- Views (Coder's column lists and meaning)
-- ---------------------------------------------------------------------------------------------

-- The newest build of every live workspace, with its job's status. A workspace without any
-- build still appears, with NULLs.
CREATE VIEW workspace_latest_builds AS
SELECT
    lb.id,
    lb.workspace_id,
    lb.template_version_id,
    lb.job_id,
    lb.template_version_preset_id,
    lb.transition,
    lb.created_at,
    lb.job_status
FROM workspaces ws
LEFT JOIN LATERAL (
    SELECT
        b.id, b.workspace_id, b.template_version_id, b.job_id,
        b.template_version_preset_id, b.transition, b.created_at, j.job_status
    FROM workspace_builds b
    JOIN provisioner_jobs j ON j.id = b.job_id
    WHERE b.workspace_id = ws.id
    ORDER BY b.build_number DESC
    LIMIT 1
) lb ON true
WHERE ws.deleted = false
ORDER BY ws.id;

-- Builds initiated by the prebuilds system user.
CREATE VIEW workspace_prebuild_builds AS
SELECT
    b.id,
    b.workspace_id,
    b.template_version_id,
    b.transition,
    b.job_id,
    b.template_version_preset_id,
    b.build_number
FROM workspace_builds b
WHERE b.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid;

-- Workspaces owned by the prebuilds user (deleted ones included, as in Coder), with the
-- preset of their newest preset-carrying build, and `ready` when every non-deleted agent of
-- their latest build is ready. Workspaces that never had a preset build are left out.
CREATE VIEW workspace_prebuilds AS
WITH owned AS (
    SELECT w.id, w.name, w.template_id, w.created_at
    FROM workspaces w
    WHERE w.owner_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid
),
last_preset AS (
    SELECT DISTINCT ON (b.workspace_id) b.workspace_id, b.template_version_preset_id
    FROM workspace_builds b
    WHERE b.template_version_preset_id IS NOT NULL
    ORDER BY b.workspace_id, b.build_number DESC
),
agent_readiness AS (
    SELECT o.id AS workspace_id, bool_and(a.lifecycle_state = 'ready') AS ready
    FROM owned o
    JOIN workspace_latest_builds lb ON lb.workspace_id = o.id
    JOIN workspace_resources r ON r.job_id = lb.job_id
    JOIN workspace_agents a ON a.resource_id = r.id AND a.deleted = false
    GROUP BY o.id
)
SELECT
    o.id,
    o.name,
    o.template_id,
    o.created_at,
    COALESCE(ar.ready, false) AS ready,
    lp.template_version_preset_id AS current_preset_id
FROM owned o
JOIN last_preset lp ON lp.workspace_id = o.id
LEFT JOIN agent_readiness ar ON ar.workspace_id = o.id;
