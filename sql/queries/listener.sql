-- Queries of the event listener (service/prebuildd/listener.py), run on its own autocommit
-- connection outside the pool.

-- name: listen_events
-- `{channel}` is filled with a quoted identifier (psycopg sql.Identifier) by the listener:
-- LISTEN takes no bind parameters. The triggers always notify prebuildd_events.
LISTEN {channel};

-- name: listener_probe
-- Liveness round trip on the listening connection: an open socket that no longer answers
-- (a silently dropped NAT entry, a frozen server) only shows when something is asked.
SELECT 1;
