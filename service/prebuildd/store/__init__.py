"""Everything prebuildd reads and writes in Coder's database, as named SQL (sql/queries/*.sql).

Callers use the names re-exported here (`store.read_snapshot`, `store.execute_actions`, ...);
each module holds one job, its docstring says how and why:

* snapshot.py        what one reconcile reads: its templates' advisory locks, then the snapshot
                     (presets, schedules, prebuild facts, the pause flag, the database's clock,
                     autoscale policies with their demand history) in one pipeline;
* rows.py            pure: the snapshot's result rows -> PresetSnapshots (`assemble`);
* actions.py         the writes that carry out a plan's actions (`execute_actions`: creates,
                     deletes and cancels in one call; `execute`: one action) and their results;
* hard_limit.py      Coder's notification to a template's admins when a preset reaches the
                     failure hard limit (best effort, after the status change);
* throttle_lines.py  the create cap's lines: read their inputs, record who waits;
* fleet.py           reads outside a snapshot: the templates a sweep enqueues, demand and
                     lifetime counters for the collector and the CLI;
* statements.py      the connection types and sending one named query.

Tests that spy on the statements a read sends patch `start` in the module that sends them
(e.g. prebuildd.store.snapshot.start): patching a name re-exported here changes nothing.
"""

from prebuildd.store.actions import (
    BATCHED_KINDS,
    INVALID_PRESET,
    QUERY_CANCELED,
    ActionFailure,
    ActionResult,
    execute,
    execute_actions,
    is_invalid_preset,
    mark_validation_failed,
)
from prebuildd.store.fleet import (
    PresetMetricsTotals,
    list_prebuild_templates,
    read_demand_totals,
    read_metrics_rows,
    read_recent_demand,
)
from prebuildd.store.rows import assemble
from prebuildd.store.snapshot import (
    LOCK_KEY_SPACE,
    LockStatus,
    Snapshot,
    lock_and_read_snapshot,
    lock_templates,
    parse_paused,
    read_paused,
    read_snapshot,
)
from prebuildd.store.statements import Conn, Connect, Row
from prebuildd.store.throttle_lines import (
    lines_from_rows,
    read_throttle_lines,
    record_throttle_waits,
)

__all__ = [
    "BATCHED_KINDS",
    "INVALID_PRESET",
    "LOCK_KEY_SPACE",
    "QUERY_CANCELED",
    "ActionFailure",
    "ActionResult",
    "Conn",
    "Connect",
    "LockStatus",
    "PresetMetricsTotals",
    "Row",
    "Snapshot",
    "assemble",
    "execute",
    "execute_actions",
    "is_invalid_preset",
    "lines_from_rows",
    "list_prebuild_templates",
    "lock_and_read_snapshot",
    "lock_templates",
    "mark_validation_failed",
    "parse_paused",
    "read_demand_totals",
    "read_metrics_rows",
    "read_paused",
    "read_recent_demand",
    "read_snapshot",
    "read_throttle_lines",
    "record_throttle_waits",
]
