-- Coder's pause switch (site_configs key 'prebuilds_settings') without the rest of
-- site_configs. Column grants cannot filter rows, and site_configs holds keys Coder keeps
-- secret, so the service role reads the switch through a view and writes it through a
-- function, both owned by the migrating owner; the role is granted only these two.

-- Views run with their owner's privileges on the tables they read.
CREATE OR REPLACE VIEW prebuildd.prebuilds_settings AS
SELECT value
FROM site_configs
WHERE key = 'prebuilds_settings';

-- SECURITY DEFINER with the search path fixed at creation (that of `migrate`, which found
-- Coder's tables), so a caller cannot redirect `site_configs` to a table of its own.
-- Other keys of the JSON object are preserved.
CREATE OR REPLACE FUNCTION prebuildd.set_reconciliation_paused(paused boolean)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $fn$
    INSERT INTO site_configs (key, value)
    VALUES ('prebuilds_settings', jsonb_build_object('reconciliation_paused', paused)::text)
    ON CONFLICT (key) DO UPDATE
    SET value = (
        COALESCE(NULLIF(site_configs.value, '')::jsonb, '{}'::jsonb)
        || jsonb_build_object('reconciliation_paused', paused)
    )::text;
$fn$;

REVOKE ALL ON FUNCTION prebuildd.set_reconciliation_paused(boolean) FROM PUBLIC;
