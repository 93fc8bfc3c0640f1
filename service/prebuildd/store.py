"""Everything prebuildd reads and writes for reconciliation, in SQL (sql/queries/*.sql).

Reads (`snapshot.sql`) are set-based and narrowed: each takes the ids of the templates being
reconciled and is served by indexes that start from those ids, so reading one template costs
the same whatever the size of the fleet, and reading a batch of 200 is still five reads.
`read_snapshot` sends them in one pipeline (one network round trip) and asks PostgreSQL to
reuse their generic plans, because planning the prebuild read costs more than running it.

Writes (`actions.sql`) are one call per action of a SECURITY DEFINER function of schema
`prebuildd` (sql/functions/prebuild_writes.sql: the service role itself may write nothing and
the functions touch only prebuilds' rows), run inside the caller's transaction (the reconciler
wraps each action in a savepoint). They write exactly the rows Coder's workspace builder
writes and queue Coder's provisioner wake-up (`provisioner_job_posted`), which PostgreSQL
delivers at commit and drops on rollback.

Isolation: the reconciler runs in READ COMMITTED. The facts about prebuilds come from a single
statement and are therefore mutually consistent; presets, schedules and the pause flag are read
microseconds apart in the same pipeline. Deletes and cancels re-check their conditions under
row locks, so a claim racing them is always safe. (Under REPEATABLE READ the same locks turn a
lost race into a serialization failure instead of a skip.)

Time: the snapshot's pipeline also reads the database's clock (`Snapshot.now`, `.clock`); the
planner compares Coder's timestamps with that, and the writes record it. Python's clock is
never sent to the database (prebuildd.clock says why).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime
from operator import attrgetter, itemgetter
from typing import Any
from uuid import UUID

import psycopg
from psycopg import AsyncConnection, AsyncCursor
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow, tuple_row
from psycopg.types.json import Jsonb

from prebuildd.clock import DatabaseClock
from prebuildd.config import CODER_NOTIFICATION_DEFAULTS, NotificationDelivery
from prebuildd.demand import (
    DemandTotals,
    HistoryCache,
    HistoryKey,
    PresetDemand,
    assemble_histories,
    policies_from_rows,
    recent_from_rows,
    totals_from_rows,
)
from prebuildd.forecast import history_window
from prebuildd.gc_pause import deferred_collection
from prebuildd.model import (
    Action,
    ActionKind,
    AutoscalePolicy,
    BuildInputs,
    BuildRecord,
    CancelPending,
    Create,
    Delete,
    InProgress,
    JobStatus,
    Plan,
    PlanConfig,
    PrebuildStatus,
    Preset,
    PresetSnapshot,
    RunningPrebuild,
    Schedule,
    SetStatus,
    TemplateParameter,
    Transition,
)
from prebuildd.queries import operation, query
from prebuildd.telemetry import db_span
from prebuildd.throttle import CreateKey, Lines, TagSet, Wait

log = logging.getLogger(__name__)

Conn = AsyncConnection[Any]
Row = TupleRow
# Where the service's loops get a connection for one piece of work (`pool.connection`).
Connect = Callable[[], AbstractAsyncContextManager[Conn]]

# key1 of every advisory lock prebuildd takes per template: the ASCII bytes of "PBLD".
LOCK_KEY_SPACE = 0x50424C44

# SQLSTATE of the one error that condemns a preset: the create function raises it, before
# writing anything, for a version no build can be made from (sql/functions/prebuild_writes.sql;
# class 23, so psycopg raises an IntegrityError subclass, but only this exact code counts).
INVALID_PRESET = "23V01"

# Enum labels -> members by dict lookup: calling the Enum class costs microseconds per value,
# which adds up over the tens of thousands of rows of a batched sweep.
_JOB_STATUS = {member.value: member for member in JobStatus}
_TRANSITION = {member.value: member for member in Transition}
_PREBUILD_STATUS = {member.value: member for member in PrebuildStatus}
# Sort keys (C-level getters: cheaper than a lambda per element).
_RANK = itemgetter(0)
_OLDEST_FIRST = attrgetter("created_at", "workspace_id")


@dataclass(frozen=True, slots=True)
class LockStatus:
    """Who is reconciling right now, as pg_locks shows it (read without taking any lock)."""

    # Templates whose per-template advisory lock a reconcile holds (a replica, or a CLI run).
    reconciling: frozenset[UUID]
    # Coder's own loop holds its lock 7 exclusively: it is in a cycle.
    coder_reconciling: bool


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one reconcile reads for its templates."""

    # One per preset with `desired_instances IS NOT NULL`, on any version of the templates.
    presets: tuple[PresetSnapshot, ...]
    # Coder's pause switch (site_configs 'prebuilds_settings').
    paused: bool
    # The database's now(): the transaction's start, the instant to plan at (never the host's
    # wall clock: Coder's timestamps come from the database; prebuildd.clock).
    now: datetime
    # The server's clock_timestamp() when the reads ran, on this host's monotonic clock.
    clock: DatabaseClock
    # Read-only snapshots only (`read_only=True`): who holds which locks; None otherwise.
    locks: LockStatus | None = None


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What executing one action changed."""

    kind: ActionKind
    preset_id: UUID
    # Workspaces created (Create).
    created: tuple[UUID, ...] = ()
    # Workspaces given a delete build (Delete) or retired with their canceled job (CancelPending).
    deleted: tuple[UUID, ...] = ()
    # Workspaces asked for but no longer eligible when the lock was held (claimed meanwhile,
    # already being deleted, ...).
    skipped: tuple[UUID, ...] = ()
    # Provisioner jobs canceled (CancelPending).
    canceled: int = 0
    # The status now stored (SetStatus); None when the preset no longer exists.
    status: PrebuildStatus | None = None


@dataclass(frozen=True, slots=True)
class PresetMetricsTotals:
    """Lifetime counters of one preset, with Coder's GetPrebuildMetrics meaning."""

    preset_id: UUID
    template_name: str
    preset_name: str
    organization_name: str
    created_total: int
    failed_total: int
    claimed_total: int


# ---------------------------------------------------------------------------------------------
# Reads
# ---------------------------------------------------------------------------------------------


async def list_prebuild_templates(conn: Conn) -> list[UUID]:
    """Templates having a preset that wants prebuilds: what a full sweep enqueues."""
    rows = await _fetch(conn, "list_prebuild_templates", {})
    return [row[0] for row in rows]


async def lock_templates(conn: Conn, template_ids: Sequence[UUID]) -> list[UUID]:
    """Take the per-template advisory locks that are free; return those held, in input order.

    Transaction-scoped (`pg_try_advisory_xact_lock(0x50424C44, hashtext(id::text))`), so they
    are released by the commit or rollback of the caller's transaction, and never waited for:
    a template held elsewhere is reconciled by its holder. One round trip for any number.
    """
    wanted = _unique(template_ids)
    if not wanted:
        return []
    rows = await _fetch(conn, "lock_templates", {"template_ids": wanted})
    held = {row[0] for row in rows}
    return [t for t in wanted if t in held]


async def read_paused(conn: Conn) -> bool:
    rows = await _fetch(conn, "prebuilds_settings", {})
    return parse_paused(rows[0][0] if rows else None)


def parse_paused(value: str | None) -> bool:
    """Coder's setting: {"reconciliation_paused": true} pauses; absent or empty does not.

    A value that is not a JSON object is an operator error. Coder refuses to reconcile then;
    we do the same (paused) and say why, rather than writing against unknown intent.
    """
    if value is None or not value.strip():
        return False
    try:
        settings = json.loads(value)
    except ValueError:
        settings = None
    if not isinstance(settings, dict):
        log.error("site_configs 'prebuilds_settings' is not a JSON object; treating as paused")
        return True
    return settings.get("reconciliation_paused") is True


async def lock_and_read_snapshot(
    conn: Conn,
    template_ids: Sequence[UUID],
    *,
    config: PlanConfig,
    skip_idle: bool = False,
    histories: HistoryCache | None = None,
) -> tuple[list[UUID], Snapshot]:
    """`lock_templates` and `read_snapshot` in one pipeline: one round trip instead of two.

    The server runs the statements in order, so every read runs after the locks were taken
    (a create is still decided only from state read under its template's lock). The reads
    cover every template asked for; the snapshot keeps only the presets of the templates
    locked: a busy template's rows are read for nothing, which is why the reconciler uses
    this for the few templates of an event, not for a sweep's batches.
    """
    wanted = _unique(template_ids)
    held: list[UUID] = []
    snapshot = await read_snapshot(
        conn, wanted, config=config, lock_into=held, skip_idle=skip_idle, histories=histories
    )
    return held, snapshot


async def read_snapshot(
    conn: Conn,
    template_ids: Sequence[UUID],
    *,
    config: PlanConfig,
    read_only: bool = False,
    lock_into: list[UUID] | None = None,
    skip_idle: bool = False,
    histories: HistoryCache | None = None,
) -> Snapshot:
    """Presets, schedules, prebuild facts, the pause flag and the database's clock, set-based.

    `read_only` (the CLI's `status` and dry runs): the transaction is switched to READ ONLY
    first, and the snapshot says who holds which locks (`Snapshot.locks`, from pg_locks): the
    caller takes none. `lock_into` (`lock_and_read_snapshot`): `lock_templates` runs first in
    the same pipeline, the templates it locked are appended to that list (in input order),
    and the snapshot has only their presets. `skip_idle`: without the presets that can
    produce no action (`assemble`).

    Presets whose (template, name) has an autoscale policy in force also get the policy and
    the demand history it is sized from: read once per template and hour, kept in
    `histories` (a fresh cache when None, as for a one-off CLI sweep).
    """
    ids = _unique(template_ids)
    params = {
        "template_ids": ids,
        "hard_limit": max(config.failure_hard_limit, 0),
        "backoff_lookback": config.backoff_lookback,
    }
    # The settings are transaction-local, so they need a transaction block: a non-autocommit
    # connection always opens one; an autocommit one has one inside `conn.transaction()`.
    generic = not conn.autocommit or conn.info.transaction_status != TransactionStatus.IDLE
    locks = None
    lock = None
    async with conn.pipeline():
        if lock_into is not None and ids:
            lock = await _start(conn, "lock_templates", {"template_ids": ids})
        if read_only:
            await _start(conn, "read_only_transaction", {})
        if generic:
            await _start(conn, "generic_plans_begin", {})
        presets = await _start(conn, "snapshot_presets", params)
        schedules = await _start(conn, "snapshot_schedules", params)
        prebuilds = await _start(conn, "snapshot_prebuilds", params)
        inputs = await _start(conn, "snapshot_build_inputs", params)
        settings = await _start(conn, "prebuilds_settings", params)
        policies = await _start(conn, "snapshot_policies", params)
        if read_only:
            locks = await _start(conn, "lock_status", params)
        # Last, so that its clock_timestamp() is as close as can be to the moment below.
        clock = await _start(conn, "snapshot_clock", {})
        if generic:
            await _start(conn, "generic_plans_end", {})
    arrived = time.monotonic()
    # The pipeline has received every result by now: fetching only parses rows (no waiting),
    # and parsing plus assembling is where a batch allocates most.
    with deferred_collection():
        preset_rows = await presets.fetchall()
        if lock_into is not None:
            held = {row[0] for row in await lock.fetchall()} if lock is not None else set()
            lock_into.extend(t for t in ids if t in held)
            if len(held) < len(ids):
                preset_rows = [row for row in preset_rows if row[2] in held]
        schedule_rows = await schedules.fetchall()
        prebuild_rows = await prebuilds.fetchall()
        input_rows = await inputs.fetchall()
        settings_rows = await settings.fetchall()
        policy_rows = await policies.fetchall()
        paused = parse_paused(settings_rows[0][0] if settings_rows else None)
        (now, server_clock), *_ = await clock.fetchall()
        snapshots = assemble(
            preset_rows, schedule_rows, prebuild_rows, input_rows, skip_idle=skip_idle
        )
        lock_status = None if locks is None else _lock_status(await locks.fetchall())
    if policy_rows:
        in_force = policies_from_rows(policy_rows)
        snapshots = await _with_demand(conn, snapshots, in_force, now, histories)
    return Snapshot(
        snapshots,
        paused,
        now=now,
        clock=DatabaseClock(server_clock, arrived),
        locks=lock_status,
    )


def _lock_status(rows: Sequence[Row]) -> LockStatus:
    (reconciling, coder), *_ = rows
    return LockStatus(frozenset(reconciling), bool(coder))


async def _with_demand(
    conn: Conn,
    snapshots: tuple[PresetSnapshot, ...],
    policies: Mapping[HistoryKey, AutoscalePolicy],
    now: datetime,
    histories: HistoryCache | None,
) -> tuple[PresetSnapshot, ...]:
    """Attach policies and demand histories; read the histories the cache lacks (one round
    trip, at most once per template and hour)."""
    cache = histories if histories is not None else HistoryCache()
    since, until = history_window(now)
    wanted: dict[UUID, set[str]] = defaultdict(set)
    for template_id, name in policies:
        wanted[template_id].add(name)
    names = {template_id: frozenset(found) for template_id, found in wanted.items()}
    stale = cache.stale(names, until)
    if stale:
        params = {
            "template_ids": stale,
            "window_since": since,
            "window_end_at": until,
            "policies_only": True,
        }
        async with conn.pipeline():
            events = await _start(conn, "demand_events", params)
            refill = await _start(conn, "demand_refill", params)
        read = assemble_histories(
            await events.fetchall(), await refill.fetchall(), since=since, until=until
        )
        cache.put(until, {t: names[t] for t in stale}, read)
    attached = []
    for snapshot in snapshots:
        key = (snapshot.preset.template_id, snapshot.preset.name)
        policy = policies.get(key)
        if policy is not None:
            snapshot = replace(snapshot, policy=policy, demand=cache.get(key, until))
        attached.append(snapshot)
    return tuple(attached)


async def read_recent_demand(
    conn: Conn, template_ids: Sequence[UUID], *, since: datetime, until: datetime
) -> dict[UUID, PresetDemand]:
    """Hits and misses per preset (every preset of the templates) in [since, until)."""
    ids = _unique(template_ids)
    if not ids:
        return {}
    params = {
        "template_ids": ids,
        "window_since": since,
        "window_end_at": until,
        "policies_only": False,
    }
    return recent_from_rows(await _fetch(conn, "demand_events", params))


async def read_demand_totals(conn: Conn) -> dict[UUID, DemandTotals]:
    """Lifetime misses and time saved by claims, per preset of an active version."""
    return totals_from_rows(await _fetch(conn, "demand_totals", {}))


async def read_metrics_rows(conn: Conn) -> list[PresetMetricsTotals]:
    rows = await _fetch(conn, "prebuild_metrics", {})
    return [
        PresetMetricsTotals(
            preset_id=r[0],
            template_name=r[1],
            preset_name=r[2],
            organization_name=r[3],
            created_total=r[4],
            failed_total=r[5],
            claimed_total=r[6],
        )
        for r in rows
    ]


async def read_throttle_lines(
    conn: Conn,
    creates: Iterable[CreateKey],
    template_ids: Sequence[UUID],
    *,
    take_locks: bool,
) -> Lines:
    """The cap's inputs for one reconcile (sql/queries/throttle.sql), one round trip.

    The tag sets of the planned `creates` (`throttle.create_key`: a version and the workspace
    tags evaluated for the preset) and those `template_ids`' presets wait on: their pending
    prebuild create jobs and their lines. With `take_locks`, their advisory locks are taken
    first and held until the caller's transaction ends: nobody else creates for those tag
    sets, or changes their lines, until then.
    """
    keys = list(dict.fromkeys(creates))
    params = {
        "version_ids": [version for version, _ in keys],
        "create_tags": Jsonb([dict(tags) for _, tags in keys]),
        "template_ids": _unique(template_ids),
        "take_locks": take_locks,
    }
    rows = await _fetch(conn, "throttle_lines", params)
    return lines_from_rows(rows)


def lines_from_rows(rows: Iterable[Row]) -> Lines:
    of_create: dict[CreateKey, TagSet] = {}
    pending: dict[TagSet, int] = {}
    waiting: list[Wait] = []
    for row in rows:
        kind, version_id, workspace_tags, org_id, tags, count, preset_id, template_id = row[:8]
        held, since = row[8:]
        tag_set = TagSet(org_id, tags)
        if kind == "version":
            of_create[(version_id, tuple(sorted(workspace_tags.items())))] = tag_set
        elif kind == "key":
            pending[tag_set] = count
        elif kind == "waiter":
            waiting.append(Wait(preset_id, template_id, tag_set, held, since))
        else:
            raise ValueError(f"throttle_lines returned an unknown kind {kind!r}")
    return Lines(of_create, pending, tuple(waiting))


async def record_throttle_waits(
    conn: Conn, template_ids: Sequence[UUID], waits: Sequence[Wait]
) -> int:
    """Replace the line entries of `template_ids` by `waits`; returns how many they have now.

    Call it in the transaction whose `read_throttle_lines(take_locks=True)` locked their tag
    sets: the lines are only ever written under those locks.
    """
    params = {
        "template_ids": _unique(template_ids),
        "preset_ids": [w.preset_id for w in waits],
        "preset_templates": [w.template_id for w in waits],
        "organization_ids": [w.tag_set.organization_id for w in waits],
        "tag_sets": [w.tag_set.tags for w in waits],
        "held": [w.held for w in waits],
        "waiting_since": [w.since for w in waits],
    }
    rows = await _fetch(conn, "record_throttle_waits", params)
    return int(rows[0][0]) if rows else 0


# ---------------------------------------------------------------------------------------------
# Rows -> model (pure)
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Writes
# ---------------------------------------------------------------------------------------------


async def execute(
    conn: Conn,
    plan: Plan,
    action: Action,
    *,
    now: datetime,
    trace_metadata: Mapping[str, str] | None = None,
    notifications: NotificationDelivery = CODER_NOTIFICATION_DEFAULTS,
) -> ActionResult:
    """Carry out one of `plan`'s actions inside the caller's transaction.

    `now` is the plan's instant (the database's now(), `Snapshot.now`). `trace_metadata`
    (W3C propagation fields, as Coder stores them) is recorded on the jobs this creates, so
    provisioners can continue the trace. `notifications`: how Coder delivers the hard-limit
    notice a SetStatus(hard_limited) queues.

    A create the create function refuses as invalid input -- the version has no usable import
    job (missing, failed or canceled) -- raises an error whose SQLSTATE is INVALID_PRESET
    (`is_invalid_preset`): the caller rolls back its savepoint and stores `validation_failed`
    with `mark_validation_failed`. Any other error (a unique violation from a racing build,
    a lock timeout, ...) says nothing about the preset and must be retried instead.
    """
    if action.preset_id != plan.preset.id:
        raise ValueError(f"action for preset {action.preset_id} in the plan of {plan.preset.id}")
    traced = Jsonb(dict(trace_metadata)) if trace_metadata else Jsonb({})
    if isinstance(action, Create):
        return await _create(conn, action, now, traced)
    if isinstance(action, Delete):
        return await _delete(conn, action, now, traced)
    if isinstance(action, CancelPending):
        return await _cancel_pending(conn, action, now)
    return await _set_status(conn, action, notifications)


# SQLSTATE query_canceled: a statement_timeout (or a cancel request) stopped an action.
QUERY_CANCELED = "57014"


@dataclass(frozen=True, slots=True)
class ActionFailure:
    """An action of `execute_actions` that failed and was rolled back alone."""

    kind: ActionKind
    preset_id: UUID
    sqlstate: str | None
    message: str

    @property
    def invalid_preset(self) -> bool:
        """A create refused as invalid input (INVALID_PRESET): the one failure that condemns
        the preset (validation_failed); anything else is retried by the next reconcile."""
        return self.kind is ActionKind.CREATE and self.sqlstate == INVALID_PRESET

    @property
    def timed_out(self) -> bool:
        return self.sqlstate == QUERY_CANCELED


# The actions `execute_actions` runs in one call; SetStatus (rare: a status transition, with
# its best-effort notification) keeps its own statement (`execute`).
BATCHED_KINDS = frozenset({ActionKind.CREATE, ActionKind.DELETE, ActionKind.CANCEL_PENDING})


async def execute_actions(
    conn: Conn,
    actions: Sequence[Action],
    *,
    now: datetime,
    trace_metadata: Mapping[str, str] | None = None,
) -> list[ActionResult | ActionFailure]:
    """Carry out creates, deletes and cancels in one call, each in a subtransaction of its own.

    One round trip for any number of actions (sql/functions/prebuild_actions.sql), inside the
    caller's transaction: a failing action is rolled back alone and comes back as an
    `ActionFailure` with its SQLSTATE, in the position of the action; the others stand, as
    with one savepoint per action. The writes are not announced back to the service as
    events (the triggers skip `prebuildd.own_writes`).

    A call that fails as a whole -- a statement timeout, which the per-action blocks let
    through, or the connection -- raises psycopg.Error after rolling the call back to its own
    savepoint (unless the connection is gone): nothing of it was written, and the caller can
    replay the actions one at a time with `execute`.
    """
    if not actions:
        return []
    for action in actions:
        if action.kind not in BATCHED_KINDS:
            raise ValueError(f"execute_actions runs creates, deletes and cancels, not {action}")
    params = {
        "actions": Jsonb([_action_json(a) for a in actions]),
        "now": now,
        "trace_metadata": Jsonb(dict(trace_metadata or {})),
    }
    # A savepoint of its own (rolled back if the call fails as a whole), sent with the call
    # and its release in one pipeline: one round trip.
    async with conn.pipeline(), conn.transaction():
        cursor = await _start(conn, "execute_actions", params)
    rows = await cursor.fetchall()
    if len(rows) != len(actions):
        raise RuntimeError(f"execute_actions returned {len(rows)} rows for {len(actions)} actions")
    return [_action_outcome(a, row) for a, row in zip(actions, rows, strict=True)]


def _action_json(action: Action) -> dict[str, object]:
    if isinstance(action, Create):
        return {
            "kind": "create",
            "preset": str(action.preset_id),
            "version": str(action.template_version_id),
            "count": action.count,
            "workspace_tags": dict(action.workspace_tags),
            "max_pending": action.max_pending,
        }
    if isinstance(action, Delete):
        return {"kind": "delete", "workspaces": [str(w) for w in _unique(action.workspace_ids)]}
    if isinstance(action, CancelPending):
        return {"kind": "cancel", "preset": str(action.preset_id)}
    raise ValueError(f"not an action execute_actions runs: {action}")


def _action_outcome(action: Action, row: Row) -> ActionResult | ActionFailure:
    _ordinal, ids, code, message = row
    if ids is None:
        text = str(message or "").strip().splitlines()
        return ActionFailure(action.kind, action.preset_id, code, text[0] if text else str(code))
    if isinstance(action, Create):
        _log_short_create(action, len(ids))
        return ActionResult(ActionKind.CREATE, action.preset_id, created=tuple(ids))
    if isinstance(action, Delete):
        return _delete_result(action, ids)
    return ActionResult(
        ActionKind.CANCEL_PENDING, action.preset_id, deleted=tuple(ids), canceled=len(ids)
    )


def is_invalid_preset(exc: BaseException) -> bool:
    """The database refused a create as invalid input (INVALID_PRESET), nothing else."""
    return isinstance(exc, psycopg.Error) and exc.sqlstate == INVALID_PRESET


async def mark_validation_failed(conn: Conn, preset_id: UUID) -> None:
    """Store `validation_failed`: creates for this preset stop until a new version fixes it."""
    await _fetch(
        conn,
        "set_preset_status",
        {"preset_id": preset_id, "status": PrebuildStatus.VALIDATION_FAILED.value},
    )


async def _create(conn: Conn, action: Create, now: datetime, traced: Jsonb) -> ActionResult:
    if action.count <= 0:
        return ActionResult(ActionKind.CREATE, action.preset_id)
    params: dict[str, object] = {
        "preset_id": action.preset_id,
        "template_version_id": action.template_version_id,
        "count": action.count,
        "now": now,
        "trace_metadata": traced,
        "workspace_tags": Jsonb(dict(action.workspace_tags)),
    }
    name = "create_prebuilds"
    if action.max_pending > 0:
        name = "create_prebuilds_capped"
        params["max_pending"] = action.max_pending
    try:
        rows = await _fetch(conn, name, params)
    except Exception as exc:
        exc.add_note(
            f"creating {action.count} prebuild(s) of preset {action.preset_id} "
            f"(version {action.template_version_id}) was rejected by the database"
        )
        raise
    _log_short_create(action, len(rows))
    return ActionResult(ActionKind.CREATE, action.preset_id, created=tuple(r[0] for r in rows))


def _log_short_create(action: Create, created: int) -> None:
    if created < action.count and action.max_pending > 0:
        # The reconciler dealt this create under the same lock, so the database's own count
        # cutting it means something else creates prebuilds for that tag set (Coder's loop,
        # a replica with another cap) or the version was retired meanwhile.
        log.warning(
            "create cut short by the database",
            extra={
                "preset_id": str(action.preset_id),
                "asked": action.count,
                "created": created,
                "max_pending": action.max_pending,
            },
        )
    elif not created and action.count > 0:
        log.warning(
            "create skipped: the version is no longer the active one of a live template",
            extra={"preset_id": str(action.preset_id)},
        )


async def _delete(conn: Conn, action: Delete, now: datetime, traced: Jsonb) -> ActionResult:
    wanted = _unique(action.workspace_ids)
    if not wanted:
        return ActionResult(ActionKind.DELETE, action.preset_id)
    params = {"workspace_ids": wanted, "now": now, "trace_metadata": traced}
    rows = await _fetch(conn, "delete_prebuilds", params)
    return _delete_result(action, [r[0] for r in rows])


def _delete_result(action: Delete, done_ids: Iterable[UUID]) -> ActionResult:
    wanted = _unique(action.workspace_ids)
    done = set(done_ids)
    return ActionResult(
        ActionKind.DELETE,
        action.preset_id,
        deleted=tuple(w for w in wanted if w in done),
        skipped=tuple(w for w in wanted if w not in done),
    )


async def _cancel_pending(conn: Conn, action: CancelPending, now: datetime) -> ActionResult:
    params = {"preset_id": action.preset_id, "now": now}
    rows = await _fetch(conn, "cancel_pending_prebuilds", params)
    retired = tuple(r[0] for r in rows)
    return ActionResult(
        ActionKind.CANCEL_PENDING, action.preset_id, deleted=retired, canceled=len(retired)
    )


async def _set_status(
    conn: Conn, action: SetStatus, notifications: NotificationDelivery
) -> ActionResult:
    params = {"preset_id": action.preset_id, "status": action.status.value}
    rows = await _fetch(conn, "set_preset_status", params)
    stored = PrebuildStatus(rows[0][0]) if rows else None
    if stored is PrebuildStatus.HARD_LIMITED:
        await _notify_hard_limited(conn, action.preset_id, notifications)
    return ActionResult(ActionKind.SET_STATUS, action.preset_id, status=stored)


async def _notify_hard_limited(
    conn: Conn, preset_id: UUID, notifications: NotificationDelivery
) -> None:
    """Queue Coder's "Prebuild Failure Limit Reached" notification for the template's admins.

    The planner emits SetStatus(hard_limited) only on the transition, so admins hear about it
    once (Coder's dedupe hash also limits it to one a day; the time is the server's). The
    function leaves out whoever turned the notification off, as Coder's enqueuer does. Best
    effort, in its own savepoint: a notification must never undo the status change or stop
    the reconcile.
    """
    params = {
        "preset_id": preset_id,
        "default_method": notifications.default_method,
        "inbox": notifications.inbox,
    }
    try:
        async with conn.transaction():
            rows = await _fetch(conn, "notify_hard_limited", params)
    except psycopg.Error as exc:
        log.warning(
            "could not queue the hard-limit notification",
            extra={"preset_id": str(preset_id), "error": str(exc).splitlines()[0]},
        )
        return
    log.warning(
        "preset reached the failure hard limit: no more prebuilds are created",
        extra={
            "preset_id": str(preset_id),
            "admins_notified": len({row[0] for row in rows}),
            "messages_queued": len(rows),
        },
    )


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


async def _start(conn: Conn, name: str, params: Mapping[str, object]) -> AsyncCursor[Row]:
    """Send a named query on its own cursor (results are read later, e.g. after a pipeline)."""
    # Tuple rows whatever row factory the caller's connection uses.
    cursor = conn.cursor(row_factory=tuple_row)
    with db_span(name, operation(name)):
        await cursor.execute(query(name), params)
    return cursor


async def _fetch(conn: Conn, name: str, params: Mapping[str, object]) -> list[Row]:
    cursor = await _start(conn, name, params)
    return await cursor.fetchall()


def _unique(ids: Iterable[UUID]) -> list[UUID]:
    """Duplicates removed, first occurrence kept (the order callers see results in)."""
    return list(dict.fromkeys(ids))
