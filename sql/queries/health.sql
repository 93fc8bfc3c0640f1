-- name: ping
-- Cheapest possible round trip: readiness and liveness probes.
SELECT 1;
