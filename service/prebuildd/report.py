"""One-shot sweeps for the CLI (`reconcile --once`, `--dry-run`, `status`) and their tables."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TextIO

import anyio
import psycopg

from prebuildd import store
from prebuildd.config import Settings
from prebuildd.model import CancelPending, Create, Delete, Plan, PlanConfig, SetStatus
from prebuildd.reconciler import Outcome, Reconciler, Trigger

# Templates per transaction: the service's own batch size (big enough for set-based reads,
# small enough to keep locks short).
BATCH = Settings().max_batch
# Batches in flight at once, each on its own connection: while Python turns one batch's rows
# into plans, PostgreSQL reads the next (the service's workers overlap the same way).
LANES = 2

Conn = psycopg.AsyncConnection[object]


async def sweep_once(
    url: str, config: PlanConfig, dry_run: bool, *, batch: int = BATCH, lanes: int = LANES
) -> list[Outcome]:
    """Reconcile (or only plan) every template with prebuild presets, in batches.

    Outcomes are in batch order (templates by id), whichever lane ran them.
    """
    reconciler = Reconciler(config, dry_run=dry_run)
    async with await _connect(url) as conn:
        ids = await store.list_prebuild_templates(conn)
        await conn.commit()
        batches = [ids[start : start + batch] for start in range(0, len(ids), batch)]
        outcomes: list[Outcome] = [Outcome(requested=tuple(b)) for b in batches]
        # One shared iterator: a lane that is done takes the next batch.
        work = iter(enumerate(batches))

        async def lane(lane_conn: Conn) -> None:
            for index, chunk in work:
                outcomes[index] = await reconciler.reconcile(lane_conn, chunk, Trigger("cli"))

        await _in_lanes(url, conn, min(lanes, len(batches)), lane)
    return outcomes


async def _in_lanes(
    url: str, conn: Conn, lanes: int, lane: Callable[[Conn], Awaitable[None]]
) -> None:
    """Run `lane` on `conn` and on `lanes - 1` more connections of its own, concurrently."""

    async def extra_lane() -> None:
        async with await _connect(url) as lane_conn:
            await lane(lane_conn)

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(lanes - 1):
                tg.start_soon(extra_lane)
            await lane(conn)
    except BaseExceptionGroup as group:
        # Callers handle a database error as such (the CLI prints it), not as a group.
        raise _first_error(group) from None


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    error = group.exceptions[0]
    return _first_error(error) if isinstance(error, BaseExceptionGroup) else error


async def _connect(url: str) -> Conn:
    return await psycopg.AsyncConnection.connect(url, application_name="prebuildd-cli")


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
    "RUNNING",
    "ELIGIBLE",
    "STARTING",
    "EXPIRED",
    "STATUS",
)


def _status_row(plan: Plan) -> tuple[str, ...]:
    p, s = plan.preset, plan.state
    status = str(p.prebuild_status)
    if s.backoff_until is not None:
        status += f" (backoff until {s.backoff_until:%H:%M:%S})"
    return (
        p.template_name,
        p.template_version_name,
        "yes" if p.is_active else "no",
        p.name,
        str(s.desired),
        str(s.running),
        str(s.eligible),
        str(s.starting),
        str(s.expired),
        status,
    )


def _table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")


def print_status(outcomes: list[Outcome], out: TextIO) -> None:
    plans = _plans(outcomes)
    if not plans:
        out.write("no presets with prebuilds configured\n")
        return
    _table([_STATUS_COLUMNS, *(_status_row(p) for p in plans)], out)
    if any(o.paused for o in outcomes):
        out.write("\nreconciliation is PAUSED (prebuildd resume)\n")


def print_plans(outcomes: list[Outcome], out: TextIO, *, dry_run: bool) -> None:
    print_status(outcomes, out)
    verb = "would" if dry_run else "did"
    for plan in _plans(outcomes):
        if not plan.actions and not plan.errors and not plan.reasons:
            continue
        p = plan.preset
        out.write(f"\n{p.template_name} / {p.template_version_name} / {p.name} ({p.id})\n")
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
        case Create(count=count):
            return f"create {count} prebuild(s)"
        case Delete(workspace_ids=ids, reason=reason):
            return f"delete {len(ids)} prebuild(s) ({reason})"
        case CancelPending(expected=expected):
            return f"cancel {expected} pending job(s) of an inactive version"
        case SetStatus(status=status):
            return f"set prebuild_status = {status}"
    return repr(action)
