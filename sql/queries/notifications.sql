-- name: notify_hard_limited
-- Queue Coder's "Prebuild Failure Limit Reached" notification for template admins, through
-- Coder's own notification queue. The function (sql/functions/prebuild_writes.sql) picks the
-- recipients and the payload, acts only when the preset is hard_limited at this instant, and
-- returns the users notified (none again the same day: Coder's dedupe hash).
SELECT n.user_id
FROM prebuildd.notify_hard_limited(%(preset_id)s::uuid) AS n (user_id);
