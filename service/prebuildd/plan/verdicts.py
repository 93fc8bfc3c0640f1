"""Verdicts the planner builds on, each pure: is a prebuild expired, is a preset inactive, is it
backing off or hard-limited; and the sort orders and small helpers both kinds of plan share.

No I/O, no clock: `now` is passed in (prebuildd.plan).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import attrgetter
from uuid import UUID

from prebuildd.model import BuildRecord, JobStatus, PlanConfig, Preset, RunningPrebuild


@dataclass(frozen=True, slots=True)
class Hold:
    """The backoff: a hold on creates and deletes after recent failed builds."""

    until: datetime
    failures: int
    # When the verdict may change first: `until`, or earlier if one of the failures that
    # triggered the hold leaves the lookback window (only when failures x interval > lookback).
    recheck: datetime


def is_expired(prebuild: RunningPrebuild, preset: Preset, now: datetime) -> bool:
    """Older than the preset's TTL (when > 0), or created before its last invalidation."""
    ttl = preset.invalidate_after_secs
    if ttl is not None and ttl > 0 and prebuild.created_at + timedelta(seconds=ttl) <= now:
        return True
    invalidated = preset.last_invalidated_at
    return invalidated is not None and prebuild.created_at < invalidated


def inactive_reason(preset: Preset) -> str | None:
    """Why prebuilds of this preset are not maintained; None when the preset is active."""
    if preset.template_deleted:
        return "template deleted"
    if preset.template_deprecated:
        return "template deprecated"
    if not preset.using_active_version:
        return "template version not active"
    return None


def hard_limit_reached(newest_first: Sequence[BuildRecord], limit: int) -> bool:
    """The latest `limit` builds (there must be that many) all failed; `limit` <= 0 disables."""
    if limit <= 0 or len(newest_first) < limit:
        return False
    return all(b.job_status == JobStatus.FAILED for b in newest_first[:limit])


def backoff(
    newest_first: Sequence[BuildRecord],
    failures_in_lookback: int,
    desired: int,
    now: datetime,
    config: PlanConfig,
) -> Hold | None:
    """The hold in force at `now`, if any of the latest `desired` builds failed recently.

    The hold lasts `failures_in_lookback x backoff_interval` from the newest such failure.
    The count is at least the failures seen among the latest builds, so an inconsistent
    snapshot cannot shorten the hold to nothing.
    """
    since = now - config.backoff_lookback
    failed = [
        b
        for b in newest_first[: max(desired, 0)]
        if b.job_status == JobStatus.FAILED and b.created_at >= since
    ]
    if not failed:
        return None
    failures = max(failures_in_lookback, len(failed))
    until = max(b.created_at for b in failed) + failures * config.backoff_interval
    if now >= until:
        return None
    ages_out = min(b.created_at for b in failed) + config.backoff_lookback
    return Hold(until=until, failures=failures, recheck=min(until, ages_out))


def next_expiry(fresh: Iterable[RunningPrebuild], preset: Preset) -> datetime | None:
    """When the first non-expired prebuild reaches its TTL (None without a TTL)."""
    ttl = preset.invalidate_after_secs
    if ttl is None or ttl <= 0:
        return None
    return min((p.created_at + timedelta(seconds=ttl) for p in fresh), default=None)


def earliest(*instants: datetime | None) -> datetime | None:
    return min((t for t in instants if t is not None), default=None)


# Sort keys. C-level getters, not lambdas: the planner sorts every preset's prebuilds and
# builds, 15,000 presets per sweep of a big fleet. The id breaks ties so that equal snapshots
# in any order give equal plans; so does the status (a str enum: it sorts as its value).
_BY_AGE = attrgetter("created_at", "workspace_id")
_BY_BUILD_TIME = attrgetter("created_at", "job_status")


def oldest_first(running: Iterable[RunningPrebuild]) -> tuple[RunningPrebuild, ...]:
    return tuple(sorted(running, key=_BY_AGE))


def newest_first(builds: Iterable[BuildRecord]) -> list[BuildRecord]:
    return sorted(builds, key=_BY_BUILD_TIME, reverse=True)


def without(
    running: tuple[RunningPrebuild, ...], expired: tuple[RunningPrebuild, ...]
) -> tuple[RunningPrebuild, ...]:
    if not expired:
        return running  # the common case: no set to build, no id to hash
    gone = {p.workspace_id for p in expired}
    return tuple(p for p in running if p.workspace_id not in gone)


def ids(prebuilds: Iterable[RunningPrebuild]) -> tuple[UUID, ...]:
    return tuple(p.workspace_id for p in prebuilds)
