"""The snapshot's result rows -> the model's PresetSnapshots (pure: rows in, dataclasses out).

`assemble` turns what `store.read_snapshot` fetched (sql/queries/snapshot.sql) into one
PresetSnapshot per preset. A batched sweep builds tens of thousands of objects here, hence the
positional constructors, the dict lookups and the integer keys noted below.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any
from uuid import UUID

from prebuildd.model import (
    BuildInputs,
    BuildRecord,
    InProgress,
    JobStatus,
    PrebuildStatus,
    Preset,
    PresetSnapshot,
    RunningPrebuild,
    Schedule,
    TemplateParameter,
    Transition,
)
from prebuildd.store.statements import Row

# Enum labels -> members by dict lookup: calling the Enum class costs microseconds per value,
# which adds up over the tens of thousands of rows of a batched sweep.
_JOB_STATUS = {member.value: member for member in JobStatus}
_TRANSITION = {member.value: member for member in Transition}
_PREBUILD_STATUS = {member.value: member for member in PrebuildStatus}
# Sort keys (C-level getters: cheaper than a lambda per element).
_RANK = itemgetter(0)
_OLDEST_FIRST = attrgetter("created_at", "workspace_id")


@dataclass
class _Facts:
    """The `snapshot_prebuilds` rows of one preset, sorted by kind."""

    running: list[RunningPrebuild] = field(default_factory=list)
    starting: int = 0
    stopping: int = 0
    deleting: int = 0
    cancelable: int = 0
    # (rank, build): rank 1 is the newest.
    recent: list[tuple[int, BuildRecord]] = field(default_factory=list)
    failures: int = 0


def assemble(
    preset_rows: Iterable[Row],
    schedule_rows: Iterable[Row],
    prebuild_rows: Iterable[Row],
    input_rows: Iterable[Row] = (),
    *,
    skip_idle: bool = False,
) -> tuple[PresetSnapshot, ...]:
    """Build one PresetSnapshot per preset row from the result sets.

    `skip_idle`: leave out the presets `plan.can_skip` would skip -- inactive (a retired
    version, a deleted or deprecated template) with no running prebuild and nothing to
    cancel -- before building anything for them. Most presets of a big fleet are such, and a
    reconcile (not a dry run, which reports every preset) never plans them.
    """
    # Keyed by the ids' 128-bit integers: UUID's __hash__ and __eq__ are Python code, and a
    # batched sweep looks ids up some 60,000 times.
    schedules: dict[int, list[Schedule]] = defaultdict(list)
    for preset_id, schedule_id, cron, desired in schedule_rows:
        schedules[preset_id.int].append(Schedule(schedule_id, cron, desired))
    facts: dict[int, _Facts] = defaultdict(_Facts)
    for row in prebuild_rows:
        _add_fact(facts[row[1].int], row)
    inputs = _build_inputs(input_rows)
    snapshots = []
    for row in preset_rows:
        key = row[0].int
        if skip_idle and not (row[8] and not row[9] and not row[10]):
            # Inactive (Preset.is_active, from the row): idle unless it has work left.
            found = facts.get(key)
            if found is None or (not found.running and found.cancelable <= 0):
                continue
        preset = _preset(row)
        # Only presets that can be created for are checked (the read covers only those).
        checked = inputs.get(key) if preset.is_active else None
        snapshots.append(_preset_snapshot(preset, schedules.get(key, ()), facts.get(key), checked))
    return tuple(snapshots)


def _build_inputs(rows: Iterable[Row]) -> dict[int, BuildInputs]:
    """`snapshot_build_inputs` rows -> BuildInputs per preset (by the id's integer)."""
    found: dict[int, BuildInputs] = {}
    for _version_id, parameters, workspace_tags, preset_values in rows:
        # Shared by the version's presets.
        version_parameters = tuple(_parameter(p) for p in parameters)
        version_tags = tuple(sorted(workspace_tags.items()))
        for preset_id, values in preset_values.items():
            if not (version_parameters or values or version_tags):
                continue  # nothing to check: the snapshot keeps inputs=None
            found[UUID(preset_id).int] = BuildInputs(
                version_parameters, tuple(sorted(values.items())), version_tags
            )
    return found


def _parameter(row: list[Any]) -> TemplateParameter:
    (
        name,
        display_name,
        type_,
        form_type,
        required,
        default,
        options,
        regex,
        minimum,
        maximum,
        error,
        monotonic,
    ) = row
    return TemplateParameter(
        name=name,
        type=type_,
        display_name=display_name,
        form_type=form_type,
        required=required,
        default_value=default,
        options=_option_values(options),
        validation_regex=regex,
        validation_min=minimum,
        validation_max=maximum,
        validation_error=error,
        validation_monotonic=monotonic,
    )


def _option_values(options: object) -> tuple[str, ...]:
    """Coder stores options as a JSON list of objects; a value left out is the empty string."""
    if not isinstance(options, list):
        return ()
    return tuple(str(option.get("value", "")) for option in options if isinstance(option, dict))


def _preset(row: Row) -> Preset:
    # snapshot_presets returns Preset's fields in their order (positional: a sweep builds
    # tens of thousands of these, and keyword arguments cost more).
    return Preset(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9],
        row[10], row[11], row[12], row[13], row[14], _PREBUILD_STATUS[row[15]],
    )  # fmt: skip


def _add_fact(f: _Facts, row: Row) -> None:
    kind, preset_id, workspace_id, name, version_id, created_at, ready, transition, status, n = row
    if kind == "running":
        prebuild = RunningPrebuild(workspace_id, name, version_id, preset_id, created_at, ready)
        f.running.append(prebuild)
    elif kind == "in_progress":
        _count_in_progress(f, _TRANSITION[transition], n)
    elif kind == "cancelable":
        f.cancelable += n
    elif kind == "recent":
        f.recent.append((n, BuildRecord(created_at, _JOB_STATUS[status])))
    elif kind == "failures":
        f.failures += n
    else:
        raise ValueError(f"snapshot_prebuilds returned an unknown kind {kind!r}")


def _count_in_progress(f: _Facts, transition: Transition, n: int) -> None:
    if transition is Transition.START:
        f.starting += n
    elif transition is Transition.STOP:
        f.stopping += n
    else:
        f.deleting += n


def _preset_snapshot(
    preset: Preset,
    schedules: Sequence[Schedule],
    facts: _Facts | None,
    inputs: BuildInputs | None = None,
) -> PresetSnapshot:
    if facts is None:
        return PresetSnapshot(preset=preset, schedules=tuple(schedules), inputs=inputs)
    facts.recent.sort(key=_RANK)
    return PresetSnapshot(
        preset=preset,
        schedules=tuple(schedules),
        # Oldest first, as the planner reads them; deterministic for equal database states.
        running=tuple(sorted(facts.running, key=_OLDEST_FIRST)),
        in_progress=InProgress(facts.starting, facts.stopping, facts.deleting),
        pending_cancelable=facts.cancelable,
        recent_builds=tuple(record for _, record in facts.recent),
        failures_in_lookback=facts.failures,
        inputs=inputs,
    )
