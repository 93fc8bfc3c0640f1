-- Forecast-driven sizing of prebuild pools, opt-in (issue 16, section 2): one policy per
-- (template, preset name), written by `prebuildd autoscale set` through
-- prebuildd.set_autoscale_policy (sql/functions/autoscale.sql), read by every reconcile of the
-- template (sql/queries/demand.sql, snapshot_policies).
--
-- Keyed by the preset's *name* within its template, not by the preset's id: a promotion
-- brings new presets (new ids) with the same names, and the pool people use is the same.
-- No foreign key to Coder's templates: prebuildd's objects must never hold a catalog
-- dependency on Coder's tables, nor make Coder's deletes check our rows. A policy whose
-- template is gone is inert (no reconcile reads it) and `autoscale list` shows it as such.
-- Bounds and mode are checked here as well as by the function, so no path stores nonsense.
-- IF NOT EXISTS: after `migrate --uninstall` every versioned file is applied again.

CREATE TABLE IF NOT EXISTS prebuildd.autoscale_policies (
    template_id   uuid        NOT NULL,
    preset_name   text        NOT NULL,
    -- off: the template's desired count only; forecast: report the suggested size;
    -- auto: aim for it (never below the template's count, never above max_instances).
    mode          text        NOT NULL,
    min_instances integer     NOT NULL,
    max_instances integer     NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template_id, preset_name),
    CONSTRAINT autoscale_policies_mode CHECK (mode IN ('off', 'forecast', 'auto')),
    CONSTRAINT autoscale_policies_bounds
        CHECK (min_instances >= 0 AND min_instances <= max_instances)
);

COMMENT ON TABLE prebuildd.autoscale_policies IS
    'prebuildd: forecast-driven pool sizing per (template, preset name); prebuildd autoscale';
