"""What one reconcile reads: its templates' locks, then the snapshot it plans from.

Reads (`snapshot.sql`) are set-based and narrowed: each takes the ids of the templates being
reconciled and is served by indexes that start from those ids, so reading one template costs
the same whatever the size of the fleet, and reading a batch of 200 is still five reads.
`read_snapshot` sends them in one pipeline (one network round trip) and asks PostgreSQL to
reuse their generic plans, because planning the prebuild read costs more than running it.
The rows become PresetSnapshots in prebuildd.store.rows.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from uuid import UUID

from psycopg.pq import TransactionStatus

from prebuildd.clock import DatabaseClock
from prebuildd.demand import HistoryCache, HistoryKey, assemble_histories, policies_from_rows
from prebuildd.forecast import history_window
from prebuildd.gc_pause import deferred_collection
from prebuildd.model import AutoscalePolicy, PlanConfig, PresetSnapshot
from prebuildd.store.rows import assemble
from prebuildd.store.statements import Conn, Row, fetch, start, unique

log = logging.getLogger(__name__)

# key1 of every advisory lock prebuildd takes per template: the ASCII bytes of "PBLD".
LOCK_KEY_SPACE = 0x50424C44


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


async def lock_templates(conn: Conn, template_ids: Sequence[UUID]) -> list[UUID]:
    """Take the per-template advisory locks that are free; return those held, in input order.

    Transaction-scoped (`pg_try_advisory_xact_lock(0x50424C44, hashtext(id::text))`), so they
    are released by the commit or rollback of the caller's transaction, and never waited for:
    a template held elsewhere is reconciled by its holder. One round trip for any number.
    """
    wanted = unique(template_ids)
    if not wanted:
        return []
    rows = await fetch(conn, "lock_templates", {"template_ids": wanted})
    held = {row[0] for row in rows}
    return [t for t in wanted if t in held]


async def read_paused(conn: Conn) -> bool:
    rows = await fetch(conn, "prebuilds_settings", {})
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
    wanted = unique(template_ids)
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
    ids = unique(template_ids)
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
            lock = await start(conn, "lock_templates", {"template_ids": ids})
        if read_only:
            await start(conn, "read_only_transaction", {})
        if generic:
            await start(conn, "generic_plans_begin", {})
        presets = await start(conn, "snapshot_presets", params)
        schedules = await start(conn, "snapshot_schedules", params)
        prebuilds = await start(conn, "snapshot_prebuilds", params)
        inputs = await start(conn, "snapshot_build_inputs", params)
        settings = await start(conn, "prebuilds_settings", params)
        policies = await start(conn, "snapshot_policies", params)
        if read_only:
            locks = await start(conn, "lock_status", params)
        # Last, so that its clock_timestamp() is as close as can be to the moment below.
        clock = await start(conn, "snapshot_clock", {})
        if generic:
            await start(conn, "generic_plans_end", {})
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
            events = await start(conn, "demand_events", params)
            refill = await start(conn, "demand_refill", params)
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
