-- name: ping
-- Cheapest possible round trip: readiness and liveness probes.
SELECT 1;

-- name: event_triggers
-- prebuildd's triggers on the tables the service's queries resolve (Coder's, through the
-- search_path), as the catalog has them: the service compares them with the files under
-- sql/triggers/ at startup and with every sweep, and `migrate` re-applies the files of those
-- that are missing or do not fire (prebuildd.event_source). `enabled` is pg_trigger.tgenabled:
-- O or A fire for Coder's sessions, D (disabled) and R (replica only) do not. The catalog is
-- readable by every role: the service's role needs no grant for this.
SELECT rel.relname AS table_name, trg.tgname AS trigger_name, trg.tgenabled::text AS enabled
FROM pg_catalog.pg_trigger AS trg
JOIN pg_catalog.pg_class AS rel ON rel.oid = trg.tgrelid
WHERE NOT trg.tgisinternal
  AND starts_with(trg.tgname, 'prebuildd_')
  AND to_regclass(quote_ident(rel.relname)) = rel.oid
ORDER BY 1, 2;
