-- Queries of `prebuildd migrate` (service/prebuildd/migrate/): locking, introspection of the
-- database it is pointed at, bookkeeping, and the listing behind `--uninstall`.
--
-- Blocks run without parameters (no %(name)s placeholder) are sent verbatim, so a single `%`
-- in them is literal (format() patterns, LIKE wildcards).

-- name: try_migration_lock
-- Session-level, so that it spans the autocommit statements of a no-transaction file. Tried,
-- not waited for: a session blocked in pg_advisory_lock() holds a snapshot, and CREATE INDEX
-- CONCURRENTLY in the lock holder waits for every older snapshot -- a deadlock.
SELECT pg_try_advisory_lock(%(key)s::bigint);

-- name: release_migration_lock
SELECT pg_advisory_unlock(%(key)s::bigint);

-- name: has_templates_table
-- Decides between "empty database: install the Coder subset" and "foreign schema: verify".
SELECT EXISTS (
    SELECT 1
    FROM pg_catalog.pg_class rel
    JOIN pg_catalog.pg_namespace ns ON ns.oid = rel.relnamespace
    WHERE ns.nspname = current_schema()
      AND rel.relname = 'templates'
      AND rel.relkind IN ('r', 'p')
);

-- name: missing_columns
-- Every wanted (table or view, column) pair that the current schema lacks; `table_exists`
-- tells a missing table from a missing column.
SELECT
    want.table_name,
    want.column_name,
    rel.oid IS NOT NULL AS table_exists
FROM unnest(%(tables)s::text[], %(columns)s::text[]) AS want (table_name, column_name)
LEFT JOIN pg_catalog.pg_namespace ns ON ns.nspname = current_schema()
LEFT JOIN pg_catalog.pg_class rel
    ON rel.relnamespace = ns.oid
   AND rel.relname = want.table_name
   AND rel.relkind IN ('r', 'p', 'v', 'm')
LEFT JOIN pg_catalog.pg_attribute att
    ON att.attrelid = rel.oid
   AND att.attname = want.column_name
   AND att.attnum > 0
   AND NOT att.attisdropped
WHERE att.attname IS NULL
ORDER BY want.table_name, want.column_name;

-- name: missing_enum_labels
-- Every wanted (enum type, label) pair that the current schema lacks.
SELECT want.type_name, want.label
FROM unnest(%(types)s::text[], %(labels)s::text[]) AS want (type_name, label)
WHERE NOT EXISTS (
    SELECT 1
    FROM pg_catalog.pg_type typ
    JOIN pg_catalog.pg_namespace ns ON ns.oid = typ.typnamespace
    JOIN pg_catalog.pg_enum lab ON lab.enumtypid = typ.oid
    WHERE ns.nspname = current_schema()
      AND typ.typname = want.type_name
      AND lab.enumlabel = want.label
)
ORDER BY want.type_name, want.label;

-- name: create_bookkeeping
-- prebuildd's own schema and its record of applied files. `path` is relative to sql/, e.g.
-- 'schema/0001_indexes.sql' or 'triggers/notify.sql'.
CREATE SCHEMA IF NOT EXISTS prebuildd;
CREATE TABLE IF NOT EXISTS prebuildd.schema_migrations (
    path       text        NOT NULL PRIMARY KEY,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: applied_migrations
SELECT path, checksum FROM prebuildd.schema_migrations;

-- name: record_migration
-- Versioned files are inserted once; repeatable files (triggers) update their checksum.
INSERT INTO prebuildd.schema_migrations (path, checksum)
VALUES (%(path)s, %(checksum)s)
ON CONFLICT (path) DO UPDATE
SET checksum = EXCLUDED.checksum,
    applied_at = now();

-- name: set_local_lock_timeout
-- DDL on a live Coder table queues behind running queries, and every query after it queues
-- behind the DDL: a short timeout per attempt means Coder's writes wait at most that long
-- behind us; migrate/locks.py retries the transaction with backoff (LockNotAvailable).
SELECT set_config('lock_timeout', %(timeout)s, true);

-- name: pin_function_search_path
-- Before each file of sql/functions/: the transaction's search_path becomes the schema that
-- holds Coder's tables, then pg_temp, explicitly last. The files' SECURITY DEFINER functions
-- capture it (`SET search_path FROM CURRENT`), so a caller's search_path (or a temporary
-- object shadowing a Coder table) can never change what they touch. Transaction-local: gone
-- at commit. Run without parameters (the %I below is format()'s, not a placeholder).
DO $pin$
BEGIN
    IF current_schema() IS NULL THEN
        RAISE EXCEPTION 'no schema of the search_path exists'
            USING HINT = 'Run `prebuildd migrate` with the search_path that finds Coder''s tables.';
    END IF;
    PERFORM pg_catalog.set_config(
        'search_path', pg_catalog.format('%I, pg_temp', current_schema()), true);
END
$pin$;

-- name: set_session_lock_timeout
-- For the statements of a no-transaction file (CREATE / DROP INDEX CONCURRENTLY), which run
-- in autocommit, so a transaction-local setting would not outlive its own statement.
SELECT set_config('lock_timeout', %(timeout)s, false);

-- name: reset_session_lock_timeout
-- Back to the session's default (including a per-role or per-database setting).
RESET lock_timeout;

-- name: old_lock_holders
-- For the message of a migration that gave up on a lock: the other sessions whose transaction
-- started before `since` and that hold a lock on a table or index of the current schema --
-- the usual suspects (an idle-in-transaction session, a long report, a stuck migration).
-- No query text: it may carry literal values.
SELECT
    act.pid,
    COALESCE(NULLIF(act.application_name, ''), '?') AS application_name,
    COALESCE(act.state, '?') AS state,
    date_trunc('second', now() - act.xact_start)::text AS transaction_age,
    string_agg(DISTINCT rel.relname, ', ' ORDER BY rel.relname) AS relations
FROM pg_catalog.pg_locks lck
JOIN pg_catalog.pg_stat_activity act ON act.pid = lck.pid
JOIN pg_catalog.pg_class rel ON rel.oid = lck.relation
JOIN pg_catalog.pg_namespace ns ON ns.oid = rel.relnamespace
WHERE lck.granted
  AND lck.pid <> pg_backend_pid()
  AND lck.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
  AND ns.nspname = current_schema()
  AND act.xact_start < %(since)s::timestamptz
GROUP BY act.pid, act.application_name, act.state, act.xact_start
ORDER BY act.xact_start
LIMIT 5;

-- name: invalid_own_indexes
-- Our indexes left INVALID by an interrupted CREATE INDEX CONCURRENTLY; IF NOT EXISTS would
-- skip them forever. Each row is the statement that drops one, identifiers quoted by format().
SELECT format('DROP INDEX CONCURRENTLY IF EXISTS %I.%I', ns.nspname, rel.relname)
FROM pg_catalog.pg_index idx
JOIN pg_catalog.pg_class rel ON rel.oid = idx.indexrelid
JOIN pg_catalog.pg_namespace ns ON ns.oid = rel.relnamespace
WHERE NOT idx.indisvalid
  AND rel.relname LIKE 'prebuildd\_%'
ORDER BY 1;

-- ---------------------------------------------------------------------------------------------
-- `migrate --uninstall`, in the order it runs. Every step is idempotent and re-derived from
-- the catalog, so an interrupted uninstall is finished by running it again. Coder's objects
-- never match: prebuildd's are named prebuildd_* (triggers, indexes) or live in schema
-- prebuildd. Each listing row carries a description for the report and the statement that
-- drops the object, identifiers quoted by format().
-- ---------------------------------------------------------------------------------------------

-- name: forget_applied_files
-- Step 1. From here on, `migrate` re-applies every file: whatever a partial uninstall has
-- already removed comes back (versioned files are idempotent: IF NOT EXISTS, OR REPLACE).
DELETE FROM prebuildd.schema_migrations;

-- name: has_bookkeeping
SELECT to_regclass('prebuildd.schema_migrations') IS NOT NULL;

-- name: own_triggers
-- Step 2, one transaction per table (each locks that one table only): triggers named
-- prebuildd_*, and any trigger calling a function of schema prebuildd, whatever its name.
SELECT
    format('%I.%I', ns.nspname, rel.relname) AS table_name,
    format('trigger %s on %s.%s', trg.tgname, ns.nspname, rel.relname) AS description,
    format('DROP TRIGGER IF EXISTS %I ON %I.%I', trg.tgname, ns.nspname, rel.relname)
        AS statement
FROM pg_catalog.pg_trigger trg
JOIN pg_catalog.pg_class rel ON rel.oid = trg.tgrelid
JOIN pg_catalog.pg_namespace ns ON ns.oid = rel.relnamespace
JOIN pg_catalog.pg_proc fn ON fn.oid = trg.tgfoid
JOIN pg_catalog.pg_namespace fns ON fns.oid = fn.pronamespace
WHERE NOT trg.tgisinternal
  AND (trg.tgname LIKE 'prebuildd\_%' OR fns.nspname = 'prebuildd')
  AND ns.nspname <> 'prebuildd'
ORDER BY 1, 2;

-- name: own_indexes
-- Step 3, each statement on its own in autocommit: CONCURRENTLY never blocks Coder's reads or
-- writes of the table (it waits for the transactions that might use the index instead).
SELECT
    format('index %s.%s', ns.nspname, rel.relname) AS description,
    format('DROP INDEX CONCURRENTLY IF EXISTS %I.%I', ns.nspname, rel.relname) AS statement
FROM pg_catalog.pg_class rel
JOIN pg_catalog.pg_namespace ns ON ns.oid = rel.relnamespace
WHERE rel.relkind IN ('i', 'I')
  AND rel.relname LIKE 'prebuildd\_%'
  AND ns.nspname <> 'prebuildd'
ORDER BY 1;

-- name: own_schema
-- Step 4, one transaction: the schema and everything in it (functions, the bookkeeping). No
-- trigger calls our functions any more (step 2), so nothing outside the schema is locked.
-- The routines are listed for the report; the last row drops them all.
SELECT description, statement
FROM (
    SELECT
        1 AS step,
        format('function %s', fn.oid::regprocedure) AS description,
        NULL::text AS statement
    FROM pg_catalog.pg_proc fn
    JOIN pg_catalog.pg_namespace ns ON ns.oid = fn.pronamespace
    WHERE ns.nspname = 'prebuildd'
      AND fn.prokind IN ('f', 'p')
    UNION ALL
    SELECT
        2,
        format('schema %s', ns.nspname),
        format('DROP SCHEMA IF EXISTS %I CASCADE', ns.nspname)
    FROM pg_catalog.pg_namespace ns
    WHERE ns.nspname = 'prebuildd'
) AS own
ORDER BY step, description;
