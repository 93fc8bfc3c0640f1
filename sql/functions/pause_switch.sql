-- Reading Coder's pause switch (site_configs key 'prebuilds_settings') without the rest of
-- site_configs: column grants cannot filter rows, and site_configs holds keys Coder keeps
-- secret, so the service role gets EXECUTE on this function only
-- (deploy/sql/prebuildd-role.sql). Its counterpart for writing is
-- prebuildd.set_reconciliation_paused (sql/schema/0002_pause_switch.sql).
--
-- A function, not a view (the view of 0002 is dropped by sql/schema/0004_pause_switch_function.sql):
-- a view over site_configs makes its columns depend on prebuildd, and Coder's migrations
-- could no longer change their type. The body is a string resolved when it runs, so nothing
-- depends on Coder's table, and the signature uses no type of Coder's: the value comes back
-- as text (NULL when the key is absent), parsed by the service.
--
-- SECURITY DEFINER runs it with the privileges of its owner, the role that ran `migrate`.
-- Its search_path is pinned at creation to the schema that holds Coder's tables (the one
-- migrate found them in), with pg_temp listed last: otherwise pg_temp is searched first, and
-- a caller's temporary table named site_configs would stand in for Coder's. pg_catalog
-- comes first so that nothing in Coder's schema can shadow a built-in.
-- Repeatable file (re-applied when it changes); CREATE OR REPLACE keeps its grants.

DO $install$
BEGIN
    EXECUTE pg_catalog.format(
        $create$
        CREATE OR REPLACE FUNCTION prebuildd.prebuilds_settings()
        RETURNS text
        LANGUAGE sql
        STABLE
        SECURITY DEFINER
        SET search_path = pg_catalog, %I, pg_temp
        AS 'SELECT value::text FROM site_configs WHERE key = ''prebuilds_settings'''
        $create$,
        pg_catalog.current_schema());
END
$install$;

COMMENT ON FUNCTION prebuildd.prebuilds_settings() IS
    'prebuildd: the value of Coder''s site_configs key prebuilds_settings (the pause switch)';

-- Functions are executable by PUBLIC unless revoked; only the service role is granted it.
REVOKE ALL ON FUNCTION prebuildd.prebuilds_settings() FROM PUBLIC;
