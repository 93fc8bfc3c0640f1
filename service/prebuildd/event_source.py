"""The event source's health: are prebuildd's triggers there, and do events announce the work?

Events only *wake* templates. When the event source breaks, nothing fails: the periodic sweep
still brings every pool to its desired size, only a sweep interval later instead of within
milliseconds. That silence is exactly why the service must notice it and say so. Ways it
breaks: a Coder migration recreates a table (its triggers go with it), an operator disables a
trigger or restores a dump without them, a trigger function stops sending because Coder renamed
a column it reads (it then sends nothing and only warns, so that Coder's write never fails:
sql/functions/notify_event.sql). Two signals, each exported as metrics, logged, and shown in
`/readyz` (prebuildd.collector):

1. **The triggers themselves** (`check`). The expected set is every `CREATE TRIGGER <name> ...
   ON <table>` of the files under `sql/triggers/`, the files `prebuildd migrate` applies; the
   catalog's set comes from the named query `event_triggers` (pg_catalog.pg_trigger, which
   every role may read: the service's least-privilege role runs it). A trigger *fires for
   Coder* when it exists on the table the service's queries resolve and is enabled for
   ordinary sessions (`tgenabled` `O` or `A`); `D` (disabled) and `R` (replica only) do not.
   The service checks at startup and with every sweep; `prebuildd migrate` runs the same check
   and re-applies the files of whatever does not fire (prebuildd.migrate), so after a Coder
   upgrade, `migrate` restores what the upgrade dropped.

2. **Work no event announced** (`UnannouncedWork`). A template counts when all of this holds:
   * the periodic sweep queued it (not the startup sweep, not the sweep after a reconnect, a
     global event or an overflow: those are *expected* to find work, as events may have been
     lost before them);
   * nothing else queued it between its previous hand-out and this reconcile: its queue entry
     carries the sweep's trigger only (no event, timer or retry coalesced into it, queue G1);
   * the event source was trusted for that whole time: the listener stayed connected since a
     sweep before this periodic one succeeded, no other sweep ran in between, and the last
     other sweep had already reconciled the template (what an earlier sweep is still covering
     may be lost events);
   * the reconcile performed at least one action on the template.

   Every state change that matters to a pool is announced by a trigger (SPEC section 4), and
   every time-driven change (schedule boundary, TTL expiry, backoff end, capped creates) by
   the plan's own timer. So on a healthy replica this count stays at zero, and a rising count
   means events are missing: a trigger that does not fire, or a function that fails (its
   WARNING is in PostgreSQL's log). Known, rare, legitimate counts: changes the triggers leave
   to the sweep on purpose (an admin's build on an unclaimed prebuild, a preset's failed
   savepoint that no event retries, and on a template without agents what a prebuild job's
   unannounced success changes: a prebuild whose version was promoted away, a surplus after
   `desired` was lowered, or a prebuild invalidated, during its build -- docs/architecture.md);
   hence the alert asks for several within half an hour.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

import psycopg

from prebuildd.queries import query, read_sql_file, sql_root
from prebuildd.trigger import Trigger

if TYPE_CHECKING:
    from prebuildd.queue import KeyMeta
    from prebuildd.reconciler import Outcome

log = logging.getLogger(__name__)

TRIGGERS_FOLDER = "triggers"
# pg_trigger.tgenabled values that fire for Coder's (ordinary, "origin") sessions.
_FIRING = frozenset({"O", "A"})
# `CREATE TRIGGER <name> <timing and events> ON <table>`; comments are removed first.
_CREATE_TRIGGER = re.compile(
    r"\bCREATE\s+TRIGGER\s+(\w+)\s+.*?\bON\s+(?:\w+\.)?(\w+)", re.IGNORECASE | re.DOTALL
)
_COMMENT = re.compile(r"--[^\n]*")


@dataclass(frozen=True, slots=True, order=True)
class ExpectedTrigger:
    """One trigger a file under sql/triggers/ creates."""

    table: str
    name: str
    # The file that creates it, relative to sql/ (what migrate re-applies).
    file: str

    def __str__(self) -> str:
        return f"{self.name} on {self.table}"


def parse_triggers(text: str, file: str) -> tuple[ExpectedTrigger, ...]:
    """The triggers one trigger file creates, in file order."""
    code = _COMMENT.sub("", text)
    return tuple(ExpectedTrigger(t, n, file) for n, t in _CREATE_TRIGGER.findall(code))


@functools.cache
def expected_triggers() -> tuple[ExpectedTrigger, ...]:
    """Every trigger of the files under sql/triggers/: the event source as it should be."""
    folder = sql_root() / TRIGGERS_FOLDER
    names = sorted(e.name for e in folder.iterdir() if e.name.endswith(".sql"))
    found: list[ExpectedTrigger] = []
    for name in names:
        file = f"{TRIGGERS_FOLDER}/{name}"
        triggers = parse_triggers(read_sql_file(TRIGGERS_FOLDER, name), file)
        if not triggers:
            raise ValueError(f"{file} creates no trigger: not a trigger file")
        found += triggers
    return tuple(sorted(found))


@dataclass(frozen=True, slots=True)
class TriggerCheck:
    """The expected triggers compared with the catalog's."""

    expected: tuple[ExpectedTrigger, ...]
    missing: tuple[ExpectedTrigger, ...] = ()
    # Present but not firing for Coder's sessions (disabled, or enabled for replicas only).
    disabled: tuple[ExpectedTrigger, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.missing and not self.disabled

    @property
    def files_to_reapply(self) -> tuple[str, ...]:
        """The trigger files that re-create every missing or disabled trigger."""
        return tuple(sorted({t.file for t in (*self.missing, *self.disabled)}))

    def describe(self) -> str:
        """One line for logs and /readyz: what does not fire, and the fix."""
        if self.ok:
            return f"all {len(self.expected)} triggers fire"
        parts = [f"missing {t}" for t in self.missing] + [f"disabled {t}" for t in self.disabled]
        broken = len(self.missing) + len(self.disabled)
        return (
            f"{broken} of {len(self.expected)} triggers do not fire ({'; '.join(parts)}): "
            "changes to those tables wait for the periodic sweep; run `prebuildd migrate` "
            "as the owner of Coder's tables"
        )


def evaluate(rows: Iterable[tuple[Any, ...]]) -> TriggerCheck:
    """Compare the catalog's rows (table, trigger name, tgenabled) with the expected set."""
    enabled = {(str(table), str(name)): str(state) for table, name, state in rows}
    expected = expected_triggers()
    missing = tuple(t for t in expected if (t.table, t.name) not in enabled)
    disabled = tuple(
        t for t in expected if enabled.get((t.table, t.name), "O") not in _FIRING
    )
    return TriggerCheck(expected, missing, disabled)


async def check(conn: psycopg.AsyncConnection[Any]) -> TriggerCheck:
    """Read the catalog on `conn` (inside the caller's transaction, if any) and compare."""
    cursor = await conn.execute(query("event_triggers"))
    return evaluate(await cursor.fetchall())


def check_sync(conn: psycopg.Connection[Any]) -> TriggerCheck:
    """`check` for synchronous callers (`prebuildd migrate`)."""
    return evaluate(conn.execute(query("event_triggers")).fetchall())


class UnannouncedWork:
    """Which templates a periodic sweep found work on that no event announced (module doc, 2).

    Fed by the service: `listening` with the listener's state, `swept` after every sweep's
    listing, `reconciled` with every reconcile and the queue entries behind it. Memory: at most
    two sets of the templates one sweep lists.
    """

    def __init__(self) -> None:
        self._listening = False
        # No event can have been lost since the last successful sweep (and it was listening).
        self._trusted = False
        # Templates the last other sweep (startup, reconnect, global event, overflow) queued
        # that no reconcile has taken yet: what they stand for may be lost events, not news.
        self._covering: set[UUID] = set()
        # Templates the current periodic sweep queued that no reconcile has taken yet.
        self._audited: set[UUID] = set()

    def listening(self, connected: bool) -> None:
        self._listening = connected
        if not connected:
            # Events may be lost from now on: the sweep after the reconnect finds that work.
            self._trusted = False
            self._audited.clear()

    def swept(self, templates: Iterable[UUID], *, periodic: bool) -> None:
        """A sweep listed `templates` and queued each of them."""
        if not periodic:
            self._covering = set(templates)
            self._audited.clear()
        elif self._trusted and self._listening:
            self._audited = set(templates) - self._covering
        else:
            self._audited.clear()
        # Whatever was lost before this sweep, this sweep covers (once it reconciled them).
        self._trusted = self._listening

    def reconciled(self, entries: Mapping[UUID, KeyMeta], outcome: Outcome) -> tuple[UUID, ...]:
        """The templates of this reconcile that count as work no event announced."""
        if self._covering:
            self._covering.difference_update(outcome.locked)
        candidates = [k for k in entries if k in self._audited]
        if not candidates:
            return ()
        self._audited.difference_update(candidates)
        if outcome.error is not None:
            return ()
        template_of = {p.preset.id: p.preset.template_id for p in outcome.plans}
        acted = {template_of.get(r.preset_id) for r in outcome.results}
        return tuple(
            k
            for k in candidates
            if entries[k].triggers == {Trigger.SWEEP} and k in acted and k in outcome.locked
        )
