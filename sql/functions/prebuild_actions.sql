-- One call that carries out every create, delete and cancel of a reconcile (issue 11).
--
-- Why. A reconcile used to run each action as its own statement in its own savepoint: three
-- round trips per action (SAVEPOINT, the call, RELEASE), so a promotion of a three-preset
-- template -- three creates, three deletes, three cancels -- spent 27 round trips and nine
-- statement start-ups before its commit (docs/benchmarks.md, bench/reaction.py). Here the
-- whole list goes to the server at once, and each action still runs in a subtransaction of
-- its own: a BEGIN ... EXCEPTION block is a savepoint, rolled back alone when the action
-- fails, so one failing action stops neither the preset's other actions nor other presets,
-- exactly as before. The failure comes back as that action's SQLSTATE and message; the
-- caller decides what it means (store.is_invalid_preset: only 23V01 on a create condemns the
-- preset). The actions run in the order given, but for the deletes (below).
--
-- Deletes together. A promotion's reconcile gives a delete build to the old prebuilds of
-- every preset: one delete action per preset. When there are several, they first run as one
-- delete_prebuilds call over all their workspaces, in a subtransaction of its own, before the
-- other actions: one set of statements instead of one per preset (bench.reaction's
-- `actions` stage, docs/benchmarks.md). Each delete action then reports the workspaces of
-- its own that were given a delete build. If that call fails, nothing of it stands and
-- every delete runs alone at its place, as any action: a failure stays the failing delete's.
-- Moving the deletes first changes nothing the others see: a delete takes only a prebuild
-- whose latest build is a succeeded `start` (a cancel only a never-started one; creates add
-- new workspaces), and the cap on pending prebuild jobs counts pending `start` builds, not
-- deletes (throttle.sql).
-- Not done when one workspace is named twice (each delete then runs alone, as before).
--
-- What is not caught: query_canceled (a statement_timeout or a cancel request, which PL/pgSQL
-- lets through on purpose) and errors outside the per-action blocks. Then the whole call
-- fails; the caller rolls its savepoint back and replays the actions one statement each
-- (store.execute_actions), which reports the timeout against the action that hit it.
--
-- Own writes are not announced back. While this call runs, the transaction-local setting
-- `prebuildd.own_writes` is 'on'; the event triggers' functions (notify_event.sql) send no
-- build_inserted or job_status event for rows written under it. The service planned these
-- writes from what it had just read under the template's lock, so their echo could only
-- trigger a follow-up reconcile with nothing to do -- which, on two cores, delays the next
-- promotion's reconcile. throttle_turn (a cancel leaving a tag set's queue wakes the next
-- template in its line, another template) is still sent. Coder's writes, `prebuildd claim`
-- and the per-statement fallback set nothing and are announced as before.
--
-- Same rules as prebuild_writes.sql: SECURITY DEFINER with the search_path pinned (pg_temp
-- last), PL/pgSQL, only built-in types at the boundary, revoked from PUBLIC and granted to
-- the service role by deploy/sql/prebuildd-role.sql. It can do nothing the entry points it
-- calls cannot: it calls them, qualified, with the caller's arguments.
--
-- `actions`: a JSON array of objects, one per action:
--     {"kind": "create", "preset": uuid, "version": uuid, "count": int,
--      "workspace_tags": {key: value}, "max_pending": int}   (max_pending > 0: under the cap)
--     {"kind": "delete", "workspaces": [uuid, ...]}
--     {"kind": "cancel", "preset": uuid}
-- Result: one row per action, `ordinal` its 0-based position; `workspace_ids` the workspaces
-- created / given a delete build / retired (empty when none), or NULL with `error_code` (the
-- SQLSTATE) and `error_message` when the action failed and was rolled back.

CREATE SCHEMA IF NOT EXISTS prebuildd;

-- The search_path is pinned by `prebuildd migrate` before this file runs
-- (sql/queries/migrate.sql, pin_function_search_path).

CREATE OR REPLACE FUNCTION prebuildd.execute_actions(
    actions jsonb,
    now_at timestamptz,
    trace_metadata jsonb
)
RETURNS TABLE (ordinal integer, workspace_ids uuid[], error_code text, error_message text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    action jsonb;
    kind text;
    i integer := 0;
    ids uuid[];
    failed_state text;
    failed_message text;
    -- The deletes run together (above): their workspaces, and those given a delete build;
    -- NULL when they run one by one.
    doomed uuid[];
    deleted uuid[];
BEGIN
    IF actions IS NULL OR pg_catalog.jsonb_typeof(actions) <> 'array' THEN
        RAISE EXCEPTION 'actions must be a JSON array, not %',
                        COALESCE(pg_catalog.jsonb_typeof(actions), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Read by the event triggers' functions: the writes below are the service's own.
    PERFORM pg_catalog.set_config('prebuildd.own_writes', 'on', true);
    BEGIN
        SELECT pg_catalog.array_agg(w.id::uuid)
        INTO doomed
        FROM pg_catalog.jsonb_array_elements(actions) AS a
        CROSS JOIN LATERAL pg_catalog.jsonb_array_elements_text(
            CASE WHEN a.value ->> 'kind' = 'delete' THEN a.value -> 'workspaces' END
        ) AS w (id)
        HAVING pg_catalog.count(DISTINCT a.value) > 1
           AND pg_catalog.count(*) = pg_catalog.count(DISTINCT w.id);
        IF doomed IS NOT NULL THEN
            SELECT COALESCE(pg_catalog.array_agg(d.workspace_id), '{}')
            INTO deleted
            FROM prebuildd.delete_prebuilds(doomed, now_at, trace_metadata) AS d;
        END IF;
    EXCEPTION WHEN OTHERS THEN
        deleted := NULL;  -- rolled back (or a bad id): each delete runs alone below
    END;
    FOR action IN SELECT a.value FROM pg_catalog.jsonb_array_elements(actions) AS a LOOP
        kind := action ->> 'kind';
        ids := NULL;
        failed_state := NULL;
        failed_message := NULL;
        BEGIN
            IF kind = 'create' THEN
                IF COALESCE((action ->> 'max_pending')::integer, 0) > 0 THEN
                    SELECT COALESCE(pg_catalog.array_agg(c.workspace_id), '{}')
                    INTO ids
                    FROM prebuildd.create_prebuilds_capped(
                        (action ->> 'preset')::uuid, (action ->> 'version')::uuid,
                        (action ->> 'count')::integer, now_at, trace_metadata,
                        COALESCE(action -> 'workspace_tags', '{}'::jsonb),
                        (action ->> 'max_pending')::integer
                    ) AS c;
                ELSE
                    SELECT COALESCE(pg_catalog.array_agg(c.workspace_id), '{}')
                    INTO ids
                    FROM prebuildd.create_prebuilds(
                        (action ->> 'preset')::uuid, (action ->> 'version')::uuid,
                        (action ->> 'count')::integer, now_at, trace_metadata,
                        COALESCE(action -> 'workspace_tags', '{}'::jsonb)
                    ) AS c;
                END IF;
            ELSIF kind = 'delete' AND deleted IS NOT NULL THEN
                -- Already run with the others: this action's share of the result.
                ids := ARRAY(
                    SELECT w::uuid
                    FROM pg_catalog.jsonb_array_elements_text(action -> 'workspaces') AS w
                    WHERE w::uuid = ANY(deleted)
                );
            ELSIF kind = 'delete' THEN
                SELECT COALESCE(pg_catalog.array_agg(d.workspace_id), '{}')
                INTO ids
                FROM prebuildd.delete_prebuilds(
                    ARRAY(SELECT w::uuid
                          FROM pg_catalog.jsonb_array_elements_text(action -> 'workspaces')
                              AS w),
                    now_at, trace_metadata
                ) AS d;
            ELSIF kind = 'cancel' THEN
                SELECT COALESCE(pg_catalog.array_agg(r.workspace_id), '{}')
                INTO ids
                FROM prebuildd.cancel_pending_prebuilds((action ->> 'preset')::uuid, now_at) AS r;
            ELSE
                RAISE EXCEPTION 'unknown action kind %', COALESCE(kind, 'NULL')
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
        EXCEPTION WHEN OTHERS THEN
            -- This action's subtransaction is rolled back; the others stand.
            ids := NULL;
            failed_state := SQLSTATE;
            failed_message := SQLERRM;
        END;
        RETURN QUERY SELECT i, ids, failed_state, failed_message;
        i := i + 1;
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION prebuildd.execute_actions(jsonb, timestamptz, jsonb) IS
    'prebuildd: every create, delete and cancel of one reconcile, each in a subtransaction';

REVOKE ALL ON FUNCTION prebuildd.execute_actions(jsonb, timestamptz, jsonb) FROM PUBLIC;
