-- name: notify_hard_limited
-- Queue Coder's "Prebuild Failure Limit Reached" notification for the template's admins,
-- through Coder's own notification queue. The function (sql/functions/prebuild_writes.sql)
-- picks the recipients, methods and payload as Coder's enqueuer would, acts only when the
-- preset is hard_limited at this instant, and returns one row per message queued (none again
-- the same day: Coder's dedupe hash). What only Coder's configuration knows comes from
-- prebuildd's mirror of it (--notifications-method, --notifications-inbox-enabled):
-- %(default_method)s is 'smtp', 'webhook' or NULL (no SMTP or webhook configured in Coder).
SELECT n.user_id, n.method
FROM prebuildd.notify_hard_limited(
    %(preset_id)s::uuid, %(default_method)s::text, %(inbox)s::boolean
) AS n (user_id, method);
