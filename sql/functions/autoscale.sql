-- The one write of autoscale policies (prebuildd.autoscale_policies, sql/schema/0007_*), as a
-- SECURITY DEFINER function of schema `prebuildd`, like the service's other writes
-- (sql/functions/prebuild_writes.sql, whose rules this file follows: search_path pinned with
-- pg_temp last, PL/pgSQL so that nothing depends on Coder's columns, built-in argument types,
-- revoked from PUBLIC).
--
-- Who may write a policy: `prebuildd autoscale set` is an operator command, like `pause` or
-- `invalidate`, run with the service's credentials. deploy/sql/prebuildd-role.sql therefore
-- grants the role EXECUTE on this function and SELECT on the table, and no direct write: the
-- role can only store a policy that passes the checks below, for a preset that exists and
-- keeps a pool. (A leaked credential could raise a policy's max; `auto` still never creates
-- more than that max, and the role could queue prebuilds directly anyway.)
--
-- Checks (SQLSTATE 22023 invalid_parameter_value, a message naming the bad value; the CLI
-- checks the same first and exits 2 either way): the mode is off, forecast or auto; min and
-- max are not negative and min <= max; the preset exists and has desired_instances. The
-- policy is keyed by the preset's template and name (it outlives promotions); setting it
-- again replaces it. Returns the key it stored, and wakes the template (a `preset_changed`
-- event on prebuildd's channel, sent at commit).
--
-- Repeatable file: re-applied by `prebuildd migrate` when it changes (CREATE OR REPLACE keeps
-- the role's grant).

-- The search_path is pinned by `prebuildd migrate` before this file runs
-- (sql/queries/migrate.sql, pin_function_search_path).

CREATE OR REPLACE FUNCTION prebuildd.set_autoscale_policy(
    preset_id uuid,
    new_mode text,
    new_min integer,
    new_max integer
)
RETURNS TABLE (policy_template_id uuid, policy_preset_name text)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $fn$
DECLARE
    found_template uuid;
    found_name text;
    found_desired integer;
BEGIN
    IF new_mode IS NULL OR new_mode NOT IN ('off', 'forecast', 'auto') THEN
        RAISE EXCEPTION 'mode must be off, forecast or auto, not %',
            COALESCE(pg_catalog.quote_literal(new_mode), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF new_min IS NULL OR new_min < 0 THEN
        RAISE EXCEPTION 'min must be >= 0, not %', COALESCE(new_min::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF new_max IS NULL OR new_max < 0 THEN
        RAISE EXCEPTION 'max must be >= 0, not %', COALESCE(new_max::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF new_min > new_max THEN
        RAISE EXCEPTION 'min (%) must not exceed max (%)', new_min, new_max
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT v.template_id, p.name, p.desired_instances
    INTO found_template, found_name, found_desired
    FROM template_version_presets AS p
    JOIN template_versions AS v ON v.id = p.template_version_id
    WHERE p.id = set_autoscale_policy.preset_id;
    IF found_template IS NULL THEN
        RAISE EXCEPTION 'no preset % (of a template)', COALESCE(preset_id::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF found_desired IS NULL THEN
        RAISE EXCEPTION 'preset % (%) has no desired_instances: it keeps no prebuild pool to size',
            preset_id, found_name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Give the preset a prebuilds block (desired_instances) in the template.';
    END IF;

    INSERT INTO prebuildd.autoscale_policies AS a
        (template_id, preset_name, mode, min_instances, max_instances, updated_at)
    VALUES (found_template, found_name, new_mode, new_min, new_max, pg_catalog.now())
    ON CONFLICT (template_id, preset_name) DO UPDATE
    SET mode = EXCLUDED.mode,
        min_instances = EXCLUDED.min_instances,
        max_instances = EXCLUDED.max_instances,
        updated_at = EXCLUDED.updated_at;

    -- The policy changes the template's plans: wake it the way a change of the preset's own
    -- prebuild settings does (delivered at commit; nothing if the caller rolls back), so the
    -- service acts at once rather than at its next sweep.
    PERFORM pg_catalog.pg_notify('prebuildd_events', pg_catalog.format(
        '{"v":1,"k":"preset_changed","t":"%s","at":%s}', found_template,
        extract(epoch FROM pg_catalog.now())));

    policy_template_id := found_template;
    policy_preset_name := found_name;
    RETURN NEXT;
END;
$fn$;

REVOKE ALL ON FUNCTION prebuildd.set_autoscale_policy(uuid, text, integer, integer) FROM PUBLIC;

COMMENT ON FUNCTION prebuildd.set_autoscale_policy(uuid, text, integer, integer) IS
    'prebuildd: store the autoscale policy of a preset''s (template, name); prebuildd autoscale set';
