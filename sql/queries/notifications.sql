-- name: notify_hard_limited
-- Tell template admins that a preset stopped getting prebuilds, through Coder's own
-- notification queue (Coder's notifier delivers it: inbox and the deployment's default
-- method). One message per admin and method; Coder's dedupe hash keeps it to one a day.
-- Labels and the template id are Coder's "Prebuild Failure Limit Reached" notification.
INSERT INTO notification_messages (
    id, notification_template_id, user_id, method, status, created_by, payload, targets,
    created_at
)
SELECT
    gen_random_uuid(),
    '414d9331-c1fc-4761-b40c-d1f4702279eb'::uuid,
    u.id,
    m.method,
    'pending',
    'prebuildd',
    jsonb_build_object(
        '_version', '1.2',
        'notification_name', 'Prebuild Failure Limit Reached',
        'notification_template_id', '414d9331-c1fc-4761-b40c-d1f4702279eb',
        'user_id', u.id,
        'user_email', u.email,
        'user_name', u.name,
        'user_username', u.username,
        'actions', '[]'::jsonb,
        'labels', jsonb_build_object(
            'org', o.name,
            'template', t.name,
            'template_version', tv.name,
            'preset', p.name
        ),
        'data', '{}'::jsonb
    ),
    ARRAY[t.id, tv.id, p.id, o.id],
    %(now)s
FROM template_version_presets AS p
JOIN template_versions AS tv ON tv.id = p.template_version_id
JOIN templates AS t ON t.id = tv.template_id
JOIN organizations AS o ON o.id = t.organization_id
CROSS JOIN users AS u
CROSS JOIN (VALUES ('smtp'::notification_method), ('inbox'::notification_method)) AS m (method)
WHERE p.id = %(preset_id)s
  AND EXISTS (
      SELECT 1 FROM notification_templates nt
      WHERE nt.id = '414d9331-c1fc-4761-b40c-d1f4702279eb'::uuid
  )
  AND NOT u.deleted
  AND u.status = 'active'
  AND NOT u.is_system
  AND u.rbac_roles && ARRAY['template-admin', 'owner']::text[]
ON CONFLICT (dedupe_hash) DO NOTHING
RETURNING user_id;
