"""The notice that a preset reached the failure hard limit: Coder's notification to its admins.

A best-effort side effect of storing `hard_limited` (prebuildd.store.actions, SetStatus): it
runs in its own savepoint, so it can never undo the status change or stop the reconcile.
"""

from __future__ import annotations

import logging
from uuid import UUID

import psycopg

from prebuildd.config import NotificationDelivery
from prebuildd.store.statements import Conn, fetch

log = logging.getLogger(__name__)


async def notify_hard_limited(
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
            rows = await fetch(conn, "notify_hard_limited", params)
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
