-- The cap on pending prebuild create jobs (`--max-pending-prebuild-jobs`), as the reconciler
-- runs it (service/prebuildd/store/throttle_lines.py, reconciler): calls of the SECURITY DEFINER
-- functions of sql/functions/throttle.sql, inside the reconcile's transaction.

-- name: throttle_lines
-- The tag sets of the creates planned (each a version and its evaluated workspace tags:
-- %(create_tags)s, a JSON array parallel to %(version_ids)s), and those the templates'
-- presets wait on: their pending prebuild create jobs and their lines. With take_locks, each
-- tag set's advisory lock is taken first (ascending order) and held until the transaction
-- ends. Tags come back as jsonb's canonical text (keys sorted): the key the caller groups by.
SELECT
    l.kind, l.template_version_id, l.version_workspace_tags, l.organization_id,
    l.tags::text AS tags, l.pending, l.preset_id, l.template_id, l.held, l.waiting_since
FROM prebuildd.throttle_lines(
    %(version_ids)s::uuid[],
    %(create_tags)s::jsonb,
    %(template_ids)s::uuid[],
    %(take_locks)s::boolean
) AS l;

-- name: create_prebuilds_capped
-- create_prebuilds (actions.sql), but never beyond %(max_pending)s pending prebuild create
-- jobs of the creates' tag set (the version's import tags with %(workspace_tags)s), counted
-- under that tag set's lock: fewer rows than %(count)s, or none, when the room ran out.
SELECT c.workspace_id, c.postings
FROM prebuildd.create_prebuilds_capped(
    %(preset_id)s::uuid,
    %(template_version_id)s::uuid,
    %(count)s::int,
    %(now)s::timestamptz,
    %(trace_metadata)s::jsonb,
    %(workspace_tags)s::jsonb,
    %(max_pending)s::int
) AS c;

-- name: record_throttle_waits
-- The templates' presets that still wait, replacing what the line held for those templates.
-- Returns how many entries they have now.
SELECT prebuildd.record_throttle_waits(
    %(template_ids)s::uuid[],
    %(preset_ids)s::uuid[],
    %(preset_templates)s::uuid[],
    %(organization_ids)s::uuid[],
    %(tag_sets)s::text[]::jsonb[],
    %(held)s::int[],
    %(waiting_since)s::timestamptz[]
);
