-- Housekeeping on the bench server (bench/_server.py) and small probes shared by the benches.

-- name: database_exists
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = %(name)s);

-- name: database_comment
-- A seeded fleet is marked with a comment once seeding completed; --reuse trusts only that.
SELECT pg_catalog.shobj_description(d.oid, 'pg_database')
FROM pg_catalog.pg_database AS d
WHERE d.datname = %(name)s;

-- name: server_settings
SELECT name, CASE WHEN unit IS NULL THEN setting ELSE current_setting(name) END
FROM pg_catalog.pg_settings
WHERE name = ANY(%(names)s::text[])
ORDER BY array_position(%(names)s::text[], name);

-- name: is_superuser
SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user;

-- name: database_size
SELECT pg_catalog.pg_size_pretty(pg_catalog.pg_database_size(current_database()));

-- name: databases_matching
SELECT datname
FROM pg_catalog.pg_database
WHERE datname ~ %(pattern)s
ORDER BY datname;

-- name: checkpointer_pid
-- A process every running cluster has: its parent is the postmaster.
SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = 'checkpointer';
