-- The line of prebuild creates held back by `--max-pending-prebuild-jobs`.
--
-- When an organization's provisioner tag set already has the cap's number of prebuild create
-- jobs waiting for a provisioner, further creates for that tag set wait. This table is who
-- waits, per (organization, tag set), in the order they are served: oldest `waiting_since`
-- first, one create at a time; a preset that gets a create goes to the back (waiting_since =
-- the time it was served). So a template with a deficit of 200 and one with a deficit of 2
-- take turns; neither waits for the other to be full.
--
-- Written only by the reconcile that holds the tag set's advisory lock
-- (prebuildd.record_throttle_waits, sql/functions/throttle.sql), so a reconcile reading it
-- under that lock sees a line nobody else changes until it commits. Read, without any lock,
-- by the trigger on provisioner_jobs: when a prebuild job leaves the queue it wakes the
-- template first in its tag set's line (event `throttle_turn`). Empty unless the cap holds
-- creates: the trigger's probe then finds nothing in an empty index.
--
-- No foreign key to Coder's tables (that would tie Coder's migrations to prebuildd): a row
-- whose preset or template disappeared is removed by the next reconcile of its template (every
-- sweep lists templates that have or had presets with prebuilds).
CREATE TABLE IF NOT EXISTS prebuildd.throttle_waits (
    preset_id       uuid        NOT NULL PRIMARY KEY,
    template_id     uuid        NOT NULL,
    organization_id uuid        NOT NULL,
    -- The jobs' tag set, exactly as provisioner_jobs.tags of the preset's creates.
    tags            jsonb       NOT NULL,
    -- Creates the preset wanted and did not get at its last reconcile.
    held            integer     NOT NULL CHECK (held > 0),
    waiting_since   timestamptz NOT NULL
);

-- The line of one tag set, in serving order (the trigger reads its first entry).
CREATE INDEX IF NOT EXISTS throttle_waits_line
    ON prebuildd.throttle_waits (organization_id, tags, waiting_since, preset_id);

-- A reconcile replaces the rows of the templates it reconciled.
CREATE INDEX IF NOT EXISTS throttle_waits_template
    ON prebuildd.throttle_waits (template_id);
