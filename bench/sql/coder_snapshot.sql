-- Rows and schema tweaks for bench/coder_snapshot.py, on a database that holds Coder's own
-- schema (its coderd/database/dump.sql, loaded at run time from a Coder checkout; nothing of it
-- is copied here). The fleet itself is bench/sql/fleet.sql's.

-- name: snapshot_prebuilds_user
-- dump.sql holds no data: the prebuilds system user, which one of Coder's migrations inserts,
-- is written here as that migration leaves it (the fleet's prebuilds belong to it).
INSERT INTO users (id, email, username, hashed_password, created_at, updated_at, status,
                   rbac_roles, login_type, is_system)
VALUES ('c42fdf75-3097-471c-8c33-fb52454d81c0', 'prebuilds@system', 'prebuilds', ''::bytea,
        now(), now(), 'active', '{}', 'none', true);

-- name: snapshot_relax_organizations
-- Coder's main branch (after v2.34) added organizations.default_org_member_roles, NOT NULL
-- without a default; the row builder (sql/seed/coder_rows.sql) names only the columns every
-- supported release has. A default for the seeding only, dropped again afterwards.
DO $relax$
BEGIN
    IF EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'organizations'
          AND column_name = 'default_org_member_roles'
    ) THEN
        ALTER TABLE organizations ALTER COLUMN default_org_member_roles SET DEFAULT '{}';
    END IF;
END
$relax$;

-- name: snapshot_restore_organizations
-- Coder's schema as dump.sql has it again: no default on the column.
DO $restore$
BEGIN
    IF EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'organizations'
          AND column_name = 'default_org_member_roles'
    ) THEN
        ALTER TABLE organizations ALTER COLUMN default_org_member_roles DROP DEFAULT;
    END IF;
END
$restore$;
