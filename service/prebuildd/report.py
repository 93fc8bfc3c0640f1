"""The CLI's tables: `status` and `reconcile --once [--dry-run]` print sweep outcomes here.

Printing only: the sweep itself (and every write) is prebuildd.sweep's. `status` and dry runs
take no lock (prebuildd.reconciler): the BUSY column says which templates a reconcile (a
replica, another CLI run) holds at this moment, whose numbers may be changing as they are
read, and a line below the table says when Coder's own reconciliation loop is in a cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TextIO
from uuid import UUID

from prebuildd.demand import PresetDemand
from prebuildd.model import CancelPending, Create, Delete, Plan, PrebuildStatus, SetStatus
from prebuildd.reconciler import Outcome

BUSY = "busy"
CODER_LOOP_RUNNING = (
    "Coder's own reconciliation loop is running a cycle (it holds advisory lock 7); "
    "it may be changing these pools right now"
)


def _plans(outcomes: list[Outcome]) -> list[Plan]:
    plans = [p for o in outcomes for p in o.plans]
    return sorted(
        plans,
        key=lambda p: (
            p.preset.template_name,
            not p.preset.is_active,
            p.preset.template_version_name,
            p.preset.name,
        ),
    )


_STATUS_COLUMNS = (
    "TEMPLATE",
    "VERSION",
    "ACTIVE",
    "PRESET",
    "DESIRED",
    "SUGGESTED",
    "RUNNING",
    "ELIGIBLE",
    "STARTING",
    "HELD",
    "EXPIRED",
)
# With demand (`prebuildd status`): hits and misses of the last 24 hours, and the share of
# that demand a prebuild served.
_DEMAND_COLUMNS = ("CLAIMS_24H", "MISSES_24H", "HIT_RATE")
_LAST_COLUMNS = ("STATUS", "BUSY")


def _reconciling(outcomes: list[Outcome]) -> frozenset[UUID]:
    return frozenset(t for o in outcomes for t in o.reconciling)


def _status_row(
    plan: Plan, reconciling: frozenset[UUID], demand: Mapping[UUID, PresetDemand] | None
) -> tuple[str, ...]:
    p, s = plan.preset, plan.state
    status = str(p.prebuild_status)
    if s.validation_failed and p.prebuild_status is not PrebuildStatus.VALIDATION_FAILED:
        # Found invalid by this plan; the reconcile that acts on it stores it.
        status = f"{status} -> {PrebuildStatus.VALIDATION_FAILED}"
    elif s.creates_refused is not None and not s.validation_failed:
        status += " (creates held)"
    if s.backoff_until is not None:
        status += f" (backoff until {s.backoff_until:%H:%M:%S})"
    cells = [
        p.template_name,
        p.template_version_name,
        "yes" if p.is_active else "no",
        p.name,
        str(s.desired),
        "-" if s.suggested is None else str(s.suggested),
        str(s.running),
        str(s.eligible),
        str(s.starting),
        str(s.held),
        str(s.expired),
    ]
    if demand is not None:
        seen = demand.get(p.id) or PresetDemand(p.id)
        rate = seen.hit_rate
        cells += [str(seen.hits), str(seen.misses), "-" if rate is None else f"{rate:.0%}"]
    return (*cells, status, BUSY if p.template_id in reconciling else "-")


def _table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")


def print_status(
    outcomes: list[Outcome],
    out: TextIO,
    demand: Mapping[UUID, PresetDemand] | None = None,
) -> None:
    """The per-preset table; with `demand` (hits and misses per preset id), its columns too.

    SUGGESTED is the pool size the demand forecast suggests for presets with an autoscale
    policy in force (`-` otherwise); in `auto` mode DESIRED follows it.
    """
    plans = _plans(outcomes)
    if not plans:
        out.write("no presets with prebuilds configured\n")
        return
    reconciling = _reconciling(outcomes)
    header = (*_STATUS_COLUMNS, *(_DEMAND_COLUMNS if demand is not None else ()), *_LAST_COLUMNS)
    _table([header, *(_status_row(p, reconciling, demand) for p in plans)], out)
    refused = [p for p in plans if p.state.creates_refused is not None]
    if refused:
        out.write("\nwhy no prebuilds are created:\n")
        for plan in refused:
            p = plan.preset
            out.write(
                f"  {p.template_name} / {p.template_version_name} / {p.name}: "
                f"{plan.state.creates_refused}\n"
            )
    held = sum(p.state.held for p in plans)
    if held:
        waiting = sum(1 for p in plans if p.state.held)
        out.write(
            f"\n{held} create(s) of {waiting} preset(s) HELD: their provisioner tag sets have "
            "--max-pending-prebuild-jobs create jobs waiting for a provisioner\n"
        )
    if any(o.paused for o in outcomes):
        out.write("\nreconciliation is PAUSED (prebuildd resume)\n")
    if reconciling:
        out.write(f"\n{BUSY}: a reconcile holds these templates right now (numbers may move)\n")
    if any(o.coder_reconciling for o in outcomes):
        out.write(f"\n{CODER_LOOP_RUNNING}\n")


def print_plans(outcomes: list[Outcome], out: TextIO, *, dry_run: bool) -> None:
    print_status(outcomes, out)
    verb = "would" if dry_run else "did"
    reconciling = _reconciling(outcomes)
    for plan in _plans(outcomes):
        if not plan.actions and not plan.errors and not plan.reasons:
            continue
        p = plan.preset
        out.write(f"\n{p.template_name} / {p.template_version_name} / {p.name} ({p.id})\n")
        if p.template_id in reconciling:
            out.write(f"  {BUSY}: being reconciled right now; this plan may be overtaken\n")
        for action in plan.actions:
            out.write(f"  {verb}: {_describe(action)}\n")
        for reason in plan.reasons:
            out.write(f"  why: {reason}\n")
        for error in plan.errors:
            out.write(f"  invalid input: {error}\n")
    created = sum(len(r.created) for o in outcomes for r in o.results)
    deleted = sum(len(r.deleted) for o in outcomes for r in o.results)
    canceled = sum(r.canceled for o in outcomes for r in o.results)
    if not dry_run:
        out.write(f"\ncreated {created}, deleted {deleted}, canceled {canceled}\n")


def _describe(action: object) -> str:
    match action:
        case Create(count=count, workspace_tags=tags, max_pending=cap) if tags or cap > 0:
            notes = []
            if tags:
                notes.append("workspace tags " + ", ".join(f"{k}={v}" for k, v in tags))
            if cap > 0:
                notes.append(f"at most {cap} pending per tag set")
            return f"create {count} prebuild(s) ({'; '.join(notes)})"
        case Create(count=count):
            return f"create {count} prebuild(s)"
        case Delete(workspace_ids=ids, reason=reason):
            return f"delete {len(ids)} prebuild(s) ({reason})"
        case CancelPending(expected=expected):
            return f"cancel {expected} pending job(s) of an inactive version"
        case SetStatus(status=status):
            return f"set prebuild_status = {status}"
    return repr(action)
