-- Queries of bench/prebuilds_user.py.

-- name: workspaces_indexes
SELECT indexname FROM pg_indexes WHERE tablename = 'workspaces';
