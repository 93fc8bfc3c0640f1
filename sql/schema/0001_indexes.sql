-- prebuildd: no-transaction
--
-- Indexes that keep the reads of one template cheap, whatever the size of the fleet.
-- Coder already indexes workspaces(template_id) for live workspaces, workspace_resources(job_id),
-- workspace_agents(resource_id), template_versions(template_id, name) and
-- workspace_builds(workspace_id, build_number) and not-yet-started provisioner jobs
-- (provisioner_jobs_started_at_idx); those are not repeated here.
--
-- CONCURRENTLY so that a live Coder database keeps writing while they build; it cannot run
-- inside a transaction, hence the marker on the first line: migrate runs each statement on its
-- own in autocommit. Rule for such files: one statement per block, each block ending with a
-- line whose last character is `;`, no function bodies. IF NOT EXISTS makes a rerun after an
-- interruption safe (migrate first drops our indexes a failed build left INVALID).

-- The prebuilds of one template: (template_id, owner_id) narrows to the prebuilds user's
-- workspaces among a template's possibly many user workspaces.
CREATE INDEX CONCURRENTLY IF NOT EXISTS prebuildd_workspaces_template_owner
    ON workspaces (template_id, owner_id)
    WHERE deleted = false;

-- Presets of a version (Coder's indexes lead with the name or cover only the default preset).
CREATE INDEX CONCURRENTLY IF NOT EXISTS prebuildd_presets_template_version
    ON template_version_presets (template_version_id);

-- A preset's parameters, read for every create and claim.
CREATE INDEX CONCURRENTLY IF NOT EXISTS prebuildd_preset_parameters_preset
    ON template_version_preset_parameters (template_version_preset_id);

-- A preset's schedules.
CREATE INDEX CONCURRENTLY IF NOT EXISTS prebuildd_preset_schedules_preset
    ON template_version_preset_prebuild_schedules (preset_id);

-- Builds of a preset (backoff, failure limit); most builds carry no preset, hence partial.
CREATE INDEX CONCURRENTLY IF NOT EXISTS prebuildd_workspace_builds_preset
    ON workspace_builds (template_version_preset_id)
    WHERE template_version_preset_id IS NOT NULL;
