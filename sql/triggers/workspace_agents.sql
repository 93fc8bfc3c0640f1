-- prebuildd's event triggers on workspace_agents (functions: sql/functions/notify_event.sql).
--
-- One repeatable file per table: `prebuildd migrate` applies each in its own transaction, so
-- installing the triggers locks one of Coder's tables at a time, briefly. No `UPDATE OF`
-- column list and no `WHEN` clause: those would make Coder's columns and types depend on the
-- trigger and block Coder's own migrations; the function does all the filtering.
-- DROP IF EXISTS + CREATE (CREATE OR REPLACE TRIGGER needs PostgreSQL 14): the names are
-- those of every earlier release, so an upgraded database ends up with exactly this set.

-- An agent of a prebuild became, or stopped being, ready. Agents' connection bookkeeping is
-- frequent and leaves the function at its first test.
DROP TRIGGER IF EXISTS prebuildd_agent_ready ON workspace_agents;
CREATE TRIGGER prebuildd_agent_ready
    AFTER UPDATE ON workspace_agents
    FOR EACH ROW EXECUTE FUNCTION prebuildd.notify_agent_ready();

-- An agent inserted already ready (the simulated provisioner does that) became ready.
DROP TRIGGER IF EXISTS prebuildd_agent_inserted_ready ON workspace_agents;
CREATE TRIGGER prebuildd_agent_inserted_ready
    AFTER INSERT ON workspace_agents
    FOR EACH ROW EXECUTE FUNCTION prebuildd.notify_agent_ready();
