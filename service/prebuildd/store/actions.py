"""The writes that carry out the planner's actions: creates, deletes, cancels, status changes.

Writes (`actions.sql`) call SECURITY DEFINER functions of schema `prebuildd`
(sql/functions/prebuild_writes.sql: the service role itself may write nothing and the functions
touch only prebuilds' rows), inside the caller's transaction. `execute_actions` runs a
reconcile's creates, deletes and cancels in one call, each in a subtransaction of its own
(sql/functions/prebuild_actions.sql); `execute` runs one action in its own statement (a status
change always; the others when a batched call failed as a whole and is replayed, the
reconciler wrapping each in a savepoint). They write exactly the rows Coder's workspace builder
writes and queue Coder's provisioner wake-up (`provisioner_job_posted`), which PostgreSQL
delivers at commit and drops on rollback.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from prebuildd.config import CODER_NOTIFICATION_DEFAULTS, NotificationDelivery
from prebuildd.model import (
    Action,
    ActionKind,
    CancelPending,
    Create,
    Delete,
    Plan,
    PrebuildStatus,
    SetStatus,
)
from prebuildd.store.hard_limit import notify_hard_limited
from prebuildd.store.statements import Conn, Row, fetch, start, unique

log = logging.getLogger(__name__)

# SQLSTATE of the one error that condemns a preset: the create function raises it, before
# writing anything, for a version no build can be made from (sql/functions/prebuild_writes.sql;
# class 23, so psycopg raises an IntegrityError subclass, but only this exact code counts).
INVALID_PRESET = "23V01"


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
        cursor = await start(conn, "execute_actions", params)
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
        return {"kind": "delete", "workspaces": [str(w) for w in unique(action.workspace_ids)]}
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
    await fetch(
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
        rows = await fetch(conn, name, params)
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
    wanted = unique(action.workspace_ids)
    if not wanted:
        return ActionResult(ActionKind.DELETE, action.preset_id)
    params = {"workspace_ids": wanted, "now": now, "trace_metadata": traced}
    rows = await fetch(conn, "delete_prebuilds", params)
    return _delete_result(action, [r[0] for r in rows])


def _delete_result(action: Delete, done_ids: Iterable[UUID]) -> ActionResult:
    wanted = unique(action.workspace_ids)
    done = set(done_ids)
    return ActionResult(
        ActionKind.DELETE,
        action.preset_id,
        deleted=tuple(w for w in wanted if w in done),
        skipped=tuple(w for w in wanted if w not in done),
    )


async def _cancel_pending(conn: Conn, action: CancelPending, now: datetime) -> ActionResult:
    params = {"preset_id": action.preset_id, "now": now}
    rows = await fetch(conn, "cancel_pending_prebuilds", params)
    retired = tuple(r[0] for r in rows)
    return ActionResult(
        ActionKind.CANCEL_PENDING, action.preset_id, deleted=retired, canceled=len(retired)
    )


async def _set_status(
    conn: Conn, action: SetStatus, notifications: NotificationDelivery
) -> ActionResult:
    params = {"preset_id": action.preset_id, "status": action.status.value}
    rows = await fetch(conn, "set_preset_status", params)
    stored = PrebuildStatus(rows[0][0]) if rows else None
    if stored is PrebuildStatus.HARD_LIMITED:
        await notify_hard_limited(conn, action.preset_id, notifications)
    return ActionResult(ActionKind.SET_STATUS, action.preset_id, status=stored)
