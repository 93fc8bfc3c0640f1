"""Hits and misses, from Coder's own rows: the shapes of what prebuildd.store reads, and the
hourly cache of the forecast's inputs.

What a hit and a miss are is defined once, in sql/queries/demand.sql. This module is pure:
it turns those rows into `DemandHistory` (the forecast's input), `PresetDemand` (`status`)
and `DemandTotals` (the metrics), and keeps `HistoryCache`.

Why a cache, and why it is exact: a history covers [until - 14 days, until) where `until`
is the start of the current hour (prebuildd.forecast.history_window), so every read of it
within one hour returns the same rows, and the forecast made from it holds for that hour. A
reconcile therefore reads the history of a template only when its cache entry is from an
earlier hour, or lacks a preset name whose policy appeared since: once per template and hour,
not once per reconcile. (Claims and misses of the current hour join the history at the next
boundary, when the plans of those templates ask to be looked at again anyway.)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from prebuildd.model import HOURS_PER_WEEK, AutoscaleMode, AutoscalePolicy, DemandHistory

__all__ = [
    "DemandTotals",
    "HistoryCache",
    "HistoryKey",
    "PresetDemand",
    "assemble_histories",
    "policies_from_rows",
    "recent_from_rows",
    "totals_from_rows",
]

# (template id, preset name): what a policy and a history belong to.
HistoryKey = tuple[UUID, str]
Row = tuple[Any, ...]

_MODES = {mode.value: mode for mode in AutoscaleMode}


@dataclass(frozen=True, slots=True)
class PresetDemand:
    """Hits and misses of one preset in a window (`prebuildd status`: the last 24 hours)."""

    preset_id: UUID
    hits: int = 0
    misses: int = 0

    @property
    def hit_rate(self) -> float | None:
        """Share of demand served by a prebuild; None when there was no demand."""
        demand = self.hits + self.misses
        return self.hits / demand if demand else None


@dataclass(frozen=True, slots=True)
class DemandTotals:
    """Lifetime totals of one preset (the metrics beside Coder's claimed total)."""

    preset_id: UUID
    misses_total: int
    # Claims whose time saved was measurable, and the seconds saved over them.
    claims_measured: int
    saved_seconds_total: float


def policies_from_rows(rows: Iterable[Row]) -> dict[HistoryKey, AutoscalePolicy]:
    """`snapshot_policies` rows -> policies by (template, preset name)."""
    policies: dict[HistoryKey, AutoscalePolicy] = {}
    for template_id, preset_name, mode, min_instances, max_instances in rows:
        policies[(template_id, preset_name)] = AutoscalePolicy(
            template_id, preset_name, _MODES[mode], min_instances, max_instances
        )
    return policies


def assemble_histories(
    event_rows: Iterable[Row],
    refill_rows: Iterable[Row],
    *,
    since: datetime,
    until: datetime,
) -> dict[HistoryKey, DemandHistory]:
    """`demand_events` (policies only) and `demand_refill` rows -> one history per key.

    Every key of `refill_rows` gets a history (zeros when it had no demand); its window starts
    at `since`, or at its first version when that is younger.
    """
    hits: dict[HistoryKey, list[int]] = defaultdict(lambda: [0] * HOURS_PER_WEEK)
    misses: dict[HistoryKey, list[int]] = defaultdict(lambda: [0] * HOURS_PER_WEEK)
    for template_id, preset_name, _preset_id, hour, n_hits, n_misses in event_rows:
        key = (template_id, preset_name)
        hits[key][hour] += int(n_hits)
        misses[key][hour] += int(n_misses)
    histories: dict[HistoryKey, DemandHistory] = {}
    zeros = [0] * HOURS_PER_WEEK
    for template_id, preset_name, first_version_at, refill_seconds, samples in refill_rows:
        key = (template_id, preset_name)
        start = since if first_version_at is None else max(since, first_version_at)
        histories[key] = DemandHistory(
            since=min(start, until),
            until=until,
            hits=tuple(hits.get(key, zeros)),
            misses=tuple(misses.get(key, zeros)),
            refill_seconds=None if refill_seconds is None else float(refill_seconds),
            refill_samples=int(samples),
        )
    return histories


def recent_from_rows(rows: Iterable[Row]) -> dict[UUID, PresetDemand]:
    """`demand_events` rows (all presets) -> hits and misses per preset id."""
    sums: dict[UUID, list[int]] = defaultdict(lambda: [0, 0])
    for _template_id, _preset_name, preset_id, _hour, n_hits, n_misses in rows:
        sums[preset_id][0] += int(n_hits)
        sums[preset_id][1] += int(n_misses)
    return {p: PresetDemand(p, h, m) for p, (h, m) in sums.items()}


def totals_from_rows(rows: Iterable[Row]) -> dict[UUID, DemandTotals]:
    """`demand_totals` rows -> totals per preset id."""
    return {
        preset_id: DemandTotals(preset_id, int(misses), int(measured), float(saved))
        for preset_id, misses, measured, saved in rows
    }


class HistoryCache:
    """Histories per template for the current hour (see the module docstring).

    One per reconciler; replicas keep their own (they read the same rows). Entries of earlier
    hours are dropped whenever a newer hour's are stored, so it holds at most the templates
    with policies.
    """

    def __init__(self) -> None:
        # template -> (until, names read, histories of those names)
        self._entries: dict[UUID, tuple[datetime, frozenset[str], dict[str, DemandHistory]]] = {}

    def stale(self, wanted: Mapping[UUID, frozenset[str]], until: datetime) -> list[UUID]:
        """Templates whose histories for `until` must be read (not cached, or names missing)."""
        stale = []
        for template_id, names in wanted.items():
            entry = self._entries.get(template_id)
            if entry is None or entry[0] != until or not names <= entry[1]:
                stale.append(template_id)
        return stale

    def put(
        self,
        until: datetime,
        read: Mapping[UUID, frozenset[str]],
        histories: Mapping[HistoryKey, DemandHistory],
    ) -> None:
        """Remember what a read for `until` returned for the templates (and names) it asked."""
        for template_id in [t for t, entry in self._entries.items() if entry[0] < until]:
            del self._entries[template_id]
        by_template: dict[UUID, dict[str, DemandHistory]] = defaultdict(dict)
        for (template_id, name), history in histories.items():
            by_template[template_id][name] = history
        for template_id, names in read.items():
            found = by_template.get(template_id, {})
            kept = {name: history for name, history in found.items() if name in names}
            self._entries[template_id] = (until, names, kept)

    def get(self, key: HistoryKey, until: datetime) -> DemandHistory | None:
        entry = self._entries.get(key[0])
        if entry is None or entry[0] != until:
            return None
        return entry[2].get(key[1])

    def __len__(self) -> int:
        return len(self._entries)
