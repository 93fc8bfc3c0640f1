"""Reads outside a reconcile's snapshot: the templates a sweep enqueues, and the demand and
lifetime counters the collector exports and the CLI's `status` shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from prebuildd.demand import DemandTotals, PresetDemand, recent_from_rows, totals_from_rows
from prebuildd.store.statements import Conn, fetch, unique


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


async def list_prebuild_templates(conn: Conn) -> list[UUID]:
    """Templates having a preset that wants prebuilds: what a full sweep enqueues."""
    rows = await fetch(conn, "list_prebuild_templates", {})
    return [row[0] for row in rows]


async def read_recent_demand(
    conn: Conn, template_ids: Sequence[UUID], *, since: datetime, until: datetime
) -> dict[UUID, PresetDemand]:
    """Hits and misses per preset (every preset of the templates) in [since, until)."""
    ids = unique(template_ids)
    if not ids:
        return {}
    params = {
        "template_ids": ids,
        "window_since": since,
        "window_end_at": until,
        "policies_only": False,
    }
    return recent_from_rows(await fetch(conn, "demand_events", params))


async def read_demand_totals(conn: Conn) -> dict[UUID, DemandTotals]:
    """Lifetime misses and time saved by claims, per preset of an active version."""
    return totals_from_rows(await fetch(conn, "demand_totals", {}))


async def read_metrics_rows(conn: Conn) -> list[PresetMetricsTotals]:
    rows = await fetch(conn, "prebuild_metrics", {})
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
