-- The view prebuildd.prebuilds_settings of 0002 read the pause switch out of site_configs.
-- A view depends on the columns it reads, so Coder could no longer change the type of
-- site_configs.key or .value in a migration ("cannot alter type of a column used by a view
-- or rule"), and Coder runs all its migrations in one transaction at start-up: coderd would
-- refuse to start. The switch is read through the function prebuildd.prebuilds_settings()
-- instead (sql/functions/pause_switch.sql, created right after this file by migrate), which
-- leaves no dependency behind.
DROP VIEW IF EXISTS prebuildd.prebuilds_settings;
