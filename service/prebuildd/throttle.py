"""The cap on pending prebuild create jobs: who may create how many now, and who waits. Pure.

`--max-pending-prebuild-jobs N` keeps at most N prebuild create jobs waiting for a provisioner
per organization and provisioner tag set (the `tags` of the jobs, which decide which
provisioner daemons may run them). When many prebuilds are wanted at once, they would
otherwise all be queued together and people's builds would wait behind the daemons busy with
them; Coder's acquire order already puts people's pending jobs first, so what the cap bounds is
the prebuild backlog itself (docs/operations.md).

The planner decides creates as if there were no cap; `share` then hands out the room left
under the cap (N minus the tag set's pending prebuild create jobs, read by the store under the
tag set's advisory lock) among every preset that waits for that tag set, those of other
templates included, in the order of their line:

* the line is ordered by `since`: when the preset started waiting, or was last served;
* room is dealt one create at a time, round-robin in that order, each preset up to what it
  wants; so a deficit of 200 and a deficit of 2 take turns, and neither starves the other;
* a preset that got at least one create goes to the back of the line (`since` = now); one
  that got none keeps its place;
* creates dealt to presets of other templates are left for them (their template is woken:
  `Verdict.wake`); this reconcile creates only its own share.

The line is stored (prebuildd.throttle_waits) by the reconcile that holds the locks, and a
prebuild job leaving the queue wakes the template first in its line (a trigger sends
`throttle_turn`). Deletes and cancels are never held: they make no create.

Every function here is pure: the same plans, lines and `now` give the same verdict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from uuid import UUID

from prebuildd.model import Create, Plan

__all__ = [
    "HEAD_RECHECK",
    "CreateKey",
    "Lines",
    "TagSet",
    "Verdict",
    "Wait",
    "create_key",
    "deal",
    "share",
]

# A preset that waits in a line nobody else is in also asks to be looked at again after this
# long. The trigger's wake-up can miss it in exactly that case: a job leaves the queue while
# the reconcile that puts the preset in line has not committed yet (the trigger reads the line
# without a lock) and finds nobody to wake. When others were in line before, the trigger
# wakes the first of them, whose reconcile deals the room and wakes the rest.
HEAD_RECHECK = timedelta(seconds=5)


@dataclass(frozen=True, slots=True, order=True)
class TagSet:
    """An organization and the tag set of prebuild jobs: what the cap counts per."""

    organization_id: UUID
    # The jobs' tags as jsonb's canonical text (keys sorted), so equal sets compare equal.
    tags: str


@dataclass(frozen=True, slots=True)
class Wait:
    """A preset in the line of a tag set: the creates it holds, and since when it waits."""

    preset_id: UUID
    template_id: UUID
    tag_set: TagSet
    held: int
    since: datetime


# What a create's jobs are tagged by: its version (the import job's tags) and the workspace
# tags evaluated for its preset (Create.workspace_tags); presets of one version may differ.
CreateKey = tuple[UUID, tuple[tuple[str, str], ...]]


def create_key(create: Create) -> CreateKey:
    return (create.template_version_id, create.workspace_tags)


@dataclass(frozen=True, slots=True)
class Lines:
    """What the store reads, under the tag sets' locks, for one reconcile."""

    # The tag set of each planned create, by `create_key` (none: the version has no import
    # job).
    tag_set_of_create: Mapping[CreateKey, TagSet]
    # Pending prebuild create jobs of every tag set involved.
    pending: Mapping[TagSet, int]
    # Every preset waiting for those tag sets (any template), in any order.
    waiting: Sequence[Wait]


@dataclass(frozen=True, slots=True)
class Verdict:
    plans: tuple[Plan, ...]
    # The line entries of the reconciled templates from now on (what the store records).
    waits: tuple[Wait, ...]
    # Templates not reconciled here that were dealt creates: wake them.
    wake: tuple[UUID, ...]
    # False when `waits` equals what the line already holds for those templates.
    changed: bool


def deal(wanted: Sequence[int], room: int) -> list[int]:
    """Round-robin: one at a time, in the given order, each up to what it wants.

    Equivalent to dealing single creates in turns, computed a level at a time.
    """
    given = [0] * len(wanted)
    left = max(room, 0)
    active = [i for i, n in enumerate(wanted) if n > 0]
    while left > 0 and active:
        level = min(wanted[i] - given[i] for i in active)
        if left >= level * len(active):
            for i in active:
                given[i] += level
            left -= level * len(active)
            active = [i for i in active if given[i] < wanted[i]]
        else:
            each, extra = divmod(left, len(active))
            for rank, i in enumerate(active):
                given[i] += each + (1 if rank < extra else 0)
            left = 0
    return given


@dataclass(slots=True)
class _Entry:
    """One place in a line while dealing."""

    preset_id: UUID
    template_id: UUID
    wanted: int
    since: datetime
    plan: Plan | None = None  # set for the presets of this reconcile that would create
    create: Create | None = None
    given: int = 0


def share(
    plans: Sequence[Plan],
    lines: Lines,
    templates: Iterable[UUID],
    cap: int,
    now: datetime,
) -> Verdict:
    """Deal the room under `cap` to the reconciled `templates`' creates and the line's others."""
    if cap <= 0:
        return Verdict(tuple(plans), (), (), False)
    reconciled = set(templates)
    before = {w.preset_id: w for w in lines.waiting if w.template_id in reconciled}
    entries = _entries(plans, lines, reconciled, before, now)
    adjusted: dict[UUID, Plan] = {}
    waits: list[Wait] = []
    wake: set[UUID] = set()
    for tag_set, line in entries.items():
        line.sort(key=lambda e: (e.since, e.preset_id))
        room = cap - lines.pending.get(tag_set, 0)
        for entry, given in zip(line, deal([e.wanted for e in line], room), strict=True):
            entry.given = given
        after = _next_line(line, now)
        # Only this reconcile's presets wait for the tag set: the one case the trigger's
        # wake-up can miss (see HEAD_RECHECK).
        alone = all(e.plan is not None for e in line)
        for place, entry in enumerate(line):
            if entry.plan is None:
                if entry.given:
                    wake.add(entry.template_id)
                continue
            held = entry.wanted - entry.given
            if held:
                waits.append(Wait(entry.preset_id, entry.template_id, tag_set, held, after[place]))
            adjusted[entry.preset_id] = _throttled(
                entry, tag_set, held, place, len(line), room, cap, lines, now, alone
            )
    new_plans = tuple(adjusted.get(p.preset.id, p) for p in plans)
    changed = _as_rows(waits) != _as_rows(before.values())
    return Verdict(new_plans, tuple(sorted(waits, key=_row)), tuple(sorted(wake)), changed)


def _entries(
    plans: Sequence[Plan],
    lines: Lines,
    reconciled: set[UUID],
    before: Mapping[UUID, Wait],
    now: datetime,
) -> dict[TagSet, list[_Entry]]:
    """Each tag set's line: others' waits as stored, this reconcile's creates as planned."""
    entries: dict[TagSet, list[_Entry]] = {}
    for wait in lines.waiting:
        entries.setdefault(wait.tag_set, [])
        if wait.template_id not in reconciled:
            entries[wait.tag_set].append(
                _Entry(wait.preset_id, wait.template_id, wait.held, wait.since)
            )
    for plan in plans:
        create = next((a for a in plan.actions if isinstance(a, Create)), None)
        if create is None or plan.preset.template_id not in reconciled:
            continue
        tag_set = lines.tag_set_of_create.get(create_key(create))
        if tag_set is None:
            continue  # no import job: the create fails as invalid input, uncapped
        earlier = before.get(plan.preset.id)
        since = earlier.since if earlier is not None else now
        entry = _Entry(plan.preset.id, plan.preset.template_id, create.count, since, plan, create)
        entries.setdefault(tag_set, []).append(entry)
    return entries


def _next_line(line: Sequence[_Entry], now: datetime) -> list[datetime]:
    """Each entry's `since` after this deal: served ones go to the back."""
    return [now if e.given else e.since for e in line]


def _throttled(
    entry: _Entry,
    tag_set: TagSet,
    held: int,
    place: int,
    length: int,
    room: int,
    cap: int,
    lines: Lines,
    now: datetime,
    alone: bool,
) -> Plan:
    """The plan of a preset of this reconcile, with its create cut to what it was dealt."""
    plan, create = entry.plan, entry.create
    assert plan is not None and create is not None
    actions = tuple(
        (replace(a, count=entry.given, max_pending=cap) if a is create else a)
        for a in plan.actions
        if a is not create or entry.given > 0
    )
    state = replace(plan.state, to_create=entry.given, held=held)
    if not held:
        return replace(plan, actions=actions, state=state)
    pending = lines.pending.get(tag_set, 0)
    reason = (
        f"pending prebuild jobs at the cap: {pending} of {cap} for organization "
        f"{plan.preset.organization_name} tags {tag_set.tags}; holding {held} create(s) "
        f"(place {place + 1} of {length} in line"
        + (f", {entry.given} created now)" if entry.given else ")")
    )
    if room <= 0:
        reason += "; the next job a provisioner picks up makes room"
    attention = plan.next_attention
    # The per-cycle bound's "look again now" would only find the cap again: the wake-up
    # comes from the line (trigger or the first one's reconcile) instead.
    if attention is not None and attention <= now:
        attention = None
    if alone:
        recheck = now + HEAD_RECHECK
        attention = recheck if attention is None else min(attention, recheck)
    return replace(
        plan,
        actions=actions,
        state=state,
        reasons=(*plan.reasons, reason),
        next_attention=attention,
    )


def _row(wait: Wait) -> tuple[UUID, UUID, TagSet, int, datetime]:
    return (wait.preset_id, wait.template_id, wait.tag_set, wait.held, wait.since)


def _as_rows(waits: Iterable[Wait]) -> set[tuple[UUID, UUID, TagSet, int, datetime]]:
    return {_row(w) for w in waits}
