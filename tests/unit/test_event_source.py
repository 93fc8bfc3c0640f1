"""The event source's health without a database: the expected triggers (parsed from the files
migrate applies), their comparison with catalog rows, and the accounting of work a periodic
sweep found that no event announced (prebuildd.event_source). The catalog query itself, the
service and migrate run against PostgreSQL in tests/integration/test_event_triggers.py."""

from __future__ import annotations

from datetime import UTC, datetime
from types import MappingProxyType
from uuid import UUID

from prebuildd import store
from prebuildd.event_source import (
    ExpectedTrigger,
    UnannouncedWork,
    evaluate,
    expected_triggers,
    parse_triggers,
)
from prebuildd.model import ActionKind, PlanConfig, Preset, PresetSnapshot
from prebuildd.plan import plan_preset
from prebuildd.queries import read_sql_file, sql_root
from prebuildd.queue import KeyMeta
from prebuildd.reconciler import Cause, Outcome
from prebuildd.trigger import Trigger

A, B, C = UUID(int=1), UUID(int=2), UUID(int=3)
NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)


# ---- the expected set ------------------------------------------------------------------------


def test_every_trigger_file_contributes_its_triggers_on_its_own_table() -> None:
    expected = expected_triggers()
    files = sorted(e.name for e in (sql_root() / "triggers").iterdir() if e.name.endswith(".sql"))
    assert {t.file for t in expected} == {f"triggers/{name}" for name in files}
    for trigger in expected:
        # One file per table, named after it (sql/triggers/<table>.sql).
        assert trigger.file == f"triggers/{trigger.table}.sql"
        assert trigger.name.startswith("prebuildd_")
        text = read_sql_file("triggers", f"{trigger.table}.sql")
        assert f"DROP TRIGGER IF EXISTS {trigger.name}" in text.replace("\n   ", " ")
    assert len({(t.table, t.name) for t in expected}) == len(expected) >= 16
    assert ExpectedTrigger("workspaces", "prebuildd_claimed", "triggers/workspaces.sql") in expected


def test_parsing_ignores_comments_and_reads_multi_line_statements() -> None:
    text = """
-- CREATE TRIGGER not_this ON nowhere (a comment)
DROP TRIGGER IF EXISTS prebuildd_a ON t1;
CREATE TRIGGER prebuildd_a
    AFTER INSERT OR DELETE ON t1
    FOR EACH ROW EXECUTE FUNCTION prebuildd.notify_event('x');
create trigger prebuildd_b after update on public.t2 for each row execute function f();
"""
    assert parse_triggers(text, "triggers/x.sql") == (
        ExpectedTrigger("t1", "prebuildd_a", "triggers/x.sql"),
        ExpectedTrigger("t2", "prebuildd_b", "triggers/x.sql"),
    )


def rows(
    *, skip: frozenset[str] = frozenset(), states: dict[str, str] | None = None
) -> list[tuple[str, str, str]]:
    """Catalog rows of every expected trigger, but `skip`, in the given `states`."""
    states = states or {}
    return [
        (t.table, t.name, states.get(t.name, "O"))
        for t in expected_triggers()
        if t.name not in skip
    ]


def test_evaluate_finds_missing_and_not_firing_triggers() -> None:
    assert evaluate(rows()).ok
    assert evaluate([*rows(), ("workspaces", "prebuildd_someone_elses", "O")]).ok
    assert evaluate(rows(states={"prebuildd_claimed": "A"})).ok  # ALWAYS fires too

    check = evaluate(
        rows(
            skip=frozenset({"prebuildd_claimed"}),
            states={"prebuildd_job_status": "D", "prebuildd_agent_ready": "R"},
        )
    )
    assert not check.ok
    assert [str(t) for t in check.missing] == ["prebuildd_claimed on workspaces"]
    assert [str(t) for t in check.disabled] == [
        "prebuildd_job_status on provisioner_jobs",
        "prebuildd_agent_ready on workspace_agents",
    ]
    assert check.files_to_reapply == (
        "triggers/provisioner_jobs.sql",
        "triggers/workspace_agents.sql",
        "triggers/workspaces.sql",
    )
    text = check.describe()
    assert text.startswith(f"3 of {len(expected_triggers())} triggers do not fire (")
    assert "missing prebuildd_claimed on workspaces" in text
    assert "disabled prebuildd_job_status on provisioner_jobs" in text
    assert "prebuildd migrate" in text


def test_a_trigger_on_a_table_of_another_name_does_not_count() -> None:
    moved = [(("old_" + t) if n == "prebuildd_claimed" else t, n, s) for t, n, s in rows()]
    assert [t.name for t in evaluate(moved).missing] == ["prebuildd_claimed"]


# ---- work no event announced -----------------------------------------------------------------


def entry(*triggers: Trigger) -> KeyMeta:
    return KeyMeta(0.0, None, len(triggers), frozenset(triggers))


def preset_of(template: UUID) -> Preset:
    return Preset(
        id=UUID(int=100 + template.int),
        name="p",
        template_id=template,
        template_name="t",
        organization_id=UUID(int=99),
        organization_name="o",
        template_version_id=UUID(int=200 + template.int),
        template_version_name="v",
        using_active_version=True,
        template_deleted=False,
        template_deprecated=False,
        desired_instances=1,
    )


def outcome(acted: set[UUID], quiet: frozenset[UUID] | set[UUID] = frozenset()) -> Outcome:
    """A reconcile of `acted` (each created a prebuild) and `quiet` (nothing to do)."""
    plans = [plan_preset(PresetSnapshot(preset_of(t)), NOW, PlanConfig()) for t in acted | quiet]
    results = [
        store.ActionResult(ActionKind.CREATE, preset_of(t).id, created=(UUID(int=7),))
        for t in acted
    ]
    locked = tuple(sorted(acted | quiet))
    return Outcome(Cause(Trigger.SWEEP), locked=locked, plans=plans, results=results)


def meta(**by_template: tuple[Trigger, ...]) -> MappingProxyType[UUID, KeyMeta]:
    names = {"a": A, "b": B, "c": C}
    return MappingProxyType({names[k]: entry(*v) for k, v in by_template.items()})


def trusted() -> UnannouncedWork:
    audit = UnannouncedWork()
    audit.listening(True)
    audit.swept([A, B, C], periodic=False)  # the startup sweep...
    startup = meta(a=(Trigger.STARTUP,), b=(Trigger.STARTUP,), c=(Trigger.STARTUP,))
    audit.reconciled(startup, outcome(set(), {A, B, C}))  # ...reconciled everything
    return audit


def test_a_periodic_sweep_that_acts_on_an_unannounced_template_counts_it() -> None:
    audit = trusted()
    audit.swept([A, B, C], periodic=True)
    found = audit.reconciled(
        meta(a=(Trigger.SWEEP,), b=(Trigger.SWEEP,), c=(Trigger.SWEEP,)), outcome({A}, {B, C})
    )
    assert found == (A,)
    # Counted once: the next reconcile of A is not the periodic sweep's.
    assert audit.reconciled(meta(a=(Trigger.SWEEP,)), outcome({A})) == ()


def test_work_an_event_timer_or_retry_queued_is_announced() -> None:
    audit = trusted()
    audit.swept([A, B, C], periodic=True)
    entries = meta(
        a=(Trigger.SWEEP, Trigger.EVENT), b=(Trigger.TIMER, Trigger.SWEEP), c=(Trigger.RETRY,)
    )
    assert audit.reconciled(entries, outcome({A, B, C})) == ()


def test_sweeps_that_may_cover_lost_events_are_not_audited() -> None:
    audit = UnannouncedWork()
    audit.listening(True)
    audit.swept([A], periodic=True)  # no sweep has covered the time before listening
    assert audit.reconciled(meta(a=(Trigger.SWEEP,)), outcome({A})) == ()

    audit = trusted()
    audit.listening(False)  # events are lost while the listener is away...
    audit.listening(True)
    audit.swept([A], periodic=True)  # ...and the reconnect sweep has not run yet
    assert audit.reconciled(meta(a=(Trigger.SWEEP,)), outcome({A})) == ()

    audit = trusted()
    audit.swept([A, B], periodic=True)
    audit.swept([A, B], periodic=False)  # a global event's sweep replaces the audit
    assert audit.reconciled(meta(a=(Trigger.SWEEP,), b=(Trigger.SWEEP,)), outcome({A, B})) == ()


def test_what_an_earlier_sweep_still_covers_is_not_counted() -> None:
    """A reconnect sweep queued A and B; the periodic sweep comes before A was reconciled: A
    may carry work from events lost during the gap."""
    audit = trusted()
    audit.listening(False)
    audit.listening(True)
    audit.swept([A, B], periodic=False)  # the reconnect sweep
    audit.reconciled(meta(b=(Trigger.SWEEP,)), outcome(set(), {B}))
    audit.swept([A, B], periodic=True)
    found = audit.reconciled(meta(a=(Trigger.SWEEP,), b=(Trigger.SWEEP,)), outcome({A, B}))
    assert found == (B,)


def test_failed_and_busy_reconciles_count_nothing() -> None:
    audit = trusted()
    audit.swept([A, B], periodic=True)
    failed = Outcome(Cause(Trigger.SWEEP), failed=(A,), error=RuntimeError("down"))
    assert audit.reconciled(meta(a=(Trigger.SWEEP,)), failed) == ()
    busy = Outcome(Cause(Trigger.SWEEP), busy=(B,))
    assert audit.reconciled(meta(b=(Trigger.SWEEP,)), busy) == ()
