"""Why a template is reconciled: one vocabulary for the queue, the dispatcher, the reconciler
and the metrics (the `trigger` label, span attribute and log field)."""

from __future__ import annotations

import enum


class Trigger(enum.StrEnum):
    EVENT = "event"  # a notification named the template
    TIMER = "timer"  # a plan asked to be looked at again (schedule, TTL, backoff end, cap)
    THROTTLE = "throttle"  # another reconcile dealt the template creates held by the job cap
    STARTUP = "startup"  # the sweep after the listener first connected
    SWEEP = "sweep"  # the periodic sweep, the sweep after a reconnect or a global event
    OVERFLOW = "overflow"  # the sweep that replaced a full queue's keys
    RETRY = "retry"  # the template was busy elsewhere, or its reconcile failed
    CLI = "cli"  # `prebuildd reconcile --once` and `prebuildd status`
