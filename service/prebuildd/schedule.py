"""Prebuild schedules: 5-field cron expressions read as ranges of whole local hours.

A preset may carry schedules (`template_version_preset_prebuild_schedules`) that override its
`desired_instances` while they cover *now*, read in the preset's `scheduling_timezone`. Pure
code: `now` is always a parameter (the reconciler passes the database's clock, never the
host's); the only outside data is the IANA time-zone database, read once per zone.

Semantics (stricter than cron's "fire at a minute", on purpose):

- Exactly five fields: minute, hour, day of month, month, day of week. The minute field must be
  `*`: a schedule is a set of *whole hours*, so `* 9-18 * * 1-5` covers 09:00:00 through
  18:59:59 local time, Monday to Friday. Coder evaluates the same expression as a point in time
  against the next cron tick and so covers 08:59:00-18:58:59; we do not copy that off-by-one.
- Fields use cron's plain syntax: numbers, names (`mon`, `jan`), ranges (also wrapping, e.g.
  `22-2`), lists and steps, as croniter parses them. croniter's random (`R`), hashed (`H`),
  last-day (`L`), weekday (`W`) and nth-weekday (`#`) extensions are rejected: they are either
  non-deterministic or not a fixed set of hours.
- Day of month and day of week combine like classic cron (and robfig/cron, which Coder uses):
  when both are restricted a day matches if *either* matches; when one is `*` (or `?`) only
  the other applies. As in classic cron, any field not written `*` is restricted, even one
  spanning every value: `* 9 15 * 0-6` covers 09:00 every day. Coder's own runtime parser
  (`cron.Weekly`) rejects any restricted day-of-month or month field; we accept them because
  Coder's template provider does and an operator who writes them means them.
- Two schedules of one preset must never cover the same hour (Coder's provider rejects that
  too); overlapping or unparsable schedules, or an unknown zone, make the preset fall back to its
  `desired_instances` and are reported as errors.
- Schedules need a zone. An empty `scheduling_timezone` is *not* UTC: with schedules, Coder
  (`PresetSnapshot.CalculateDesiredInstances`, every release since v2.25) logs an error and
  uses `desired_instances`, whatever the schedules say; so do we, and it is reported as an
  `invalid_timezone` input error (logged, counted, shown by `reconcile --dry-run`). Without
  schedules the zone is never read and an empty one is fine.
"""

from __future__ import annotations

import calendar
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID
from zoneinfo import ZoneInfo

from croniter import CroniterError, croniter

from prebuildd.model import InputError, InputErrorKind, Schedule

__all__ = [
    "HORIZON",
    "NO_TIMEZONE",
    "DesiredResult",
    "HourRange",
    "ScheduleError",
    "covers",
    "desired_instances",
    "parse_cron",
    "resolve_timezone",
]

# How far ahead `next_change` looks. A week plus a day sees every weekly boundary from any
# instant; rarer boundaries (monthly schedules) are caught by the periodic full sweep.
HORIZON = timedelta(days=8)
_HOUR = timedelta(hours=1)

# One item of a cron field: `*`, `?`, a number or a 3-letter name, an optional `-end`, an
# optional `/step`. Anything else (R, H, L, W, #, @daily, ...) is refused before croniter sees it.
_ITEM = re.compile(r"(\*|\?|\d+|[a-z]{3})(-(\d+|[a-z]{3}))?(/\d+)?", re.IGNORECASE)
_FIELD_NAMES = ("minute", "hour", "day-of-month", "month", "day-of-week")


class ScheduleError(ValueError):
    """A cron expression or time zone that cannot be used as a prebuild schedule."""


@dataclass(frozen=True, slots=True)
class HourRange:
    """A parsed schedule: the local hours and days it covers. `None` means "any"."""

    expression: str
    hours: frozenset[int]
    days_of_month: frozenset[int] | None
    months: frozenset[int] | None
    # Cron numbering: 0 = Sunday ... 6 = Saturday.
    days_of_week: frozenset[int] | None

    def covers_day(self, month: int, day: int, weekday: int) -> bool:
        """Whether a calendar day (cron weekday numbering) is part of the range."""
        if self.months is not None and month not in self.months:
            return False
        dom, dow = self.days_of_month, self.days_of_week
        if dom is not None and dow is not None:
            # Classic cron: both restricted means either may match.
            return day in dom or weekday in dow
        return (dom is None or day in dom) and (dow is None or weekday in dow)

    def covers(self, local: datetime) -> bool:
        """Whether a local wall-clock time falls in the range (whole hours, any minute)."""
        weekday = (local.weekday() + 1) % 7  # Python: Monday = 0; cron: Sunday = 0.
        return local.hour in self.hours and self.covers_day(local.month, local.day, weekday)


@dataclass(frozen=True, slots=True)
class DesiredResult:
    """How many prebuilds a preset wants at one instant, and why."""

    desired: int
    # The schedule that set `desired`; None when the preset's default applies.
    schedule_id: UUID | None
    # Invalid input found (bad zone, bad or overlapping cron, negative counts).
    errors: tuple[InputError, ...]
    # Next instant (UTC) at which the covering schedule may change; None: not within HORIZON,
    # no schedules, or schedules unusable.
    next_change: datetime | None


def parse_cron(expression: str) -> HourRange:
    """Parse a schedule's cron expression; raise ScheduleError with the reason if unusable."""
    parsed = _parse(expression)
    if isinstance(parsed, str):
        raise ScheduleError(parsed)
    return parsed


def covers(cron: str, local_dt: datetime) -> bool:
    """Whether `cron` covers the wall-clock time `local_dt` (already in the schedule's zone)."""
    return parse_cron(cron).covers(local_dt)


def resolve_timezone(name: str) -> ZoneInfo:
    """The zone schedules are read in. Raise ScheduleError if unknown or empty (no zone)."""
    zone = _zone(name)
    if isinstance(zone, str):
        raise ScheduleError(zone)
    return zone


def desired_instances(
    default: int, schedules: Sequence[Schedule], timezone: str, now: datetime
) -> DesiredResult:
    """The desired count at `now`: the first covering schedule's, else `default`.

    Schedules are taken in the order given (the store orders them by id); since overlapping
    schedules are rejected, at most one covers any instant.

    Any invalid input (unknown zone, invalid or overlapping cron) makes the whole set of
    schedules unusable: the result falls back to `default` with the reasons in `errors`.
    Negative counts are reported and read as 0.
    """
    now = _as_utc(now)
    errors: list[InputError] = []
    base = _non_negative(default, "desired_instances", errors)
    if not schedules:
        return DesiredResult(base, None, tuple(errors), None)
    problems = _schedule_problems(schedules, timezone)
    counts = [
        _non_negative(s.desired_instances, f"schedule {s.id}: desired_instances", errors)
        for s in schedules
    ]
    if problems:
        return DesiredResult(base, None, (*problems, *errors), None)
    expressions = tuple(s.cron_expression for s in schedules)
    zone = resolve_timezone(timezone)
    index = _covering_index(expressions, now.astimezone(zone))
    next_change = _scan(expressions, timezone, _next_local_hour(now, zone), index)
    if index is None:
        return DesiredResult(base, None, tuple(errors), next_change)
    return DesiredResult(counts[index], schedules[index].id, tuple(errors), next_change)


# ---------------------------------------------------------------------------------------------
# Parsing and validation (cached: the same few expressions are planned over and over).
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _parse(expression: str) -> HourRange | str:
    """Parsed range, or the reason it is invalid (cached either way, unlike a raised error)."""
    fields = expression.split()
    where = f"cron {expression!r}"
    if len(fields) != 5:
        return f"{where}: expected 5 fields (minute hour day month weekday), got {len(fields)}"
    if fields[0] != "*":
        return f"{where}: the minute field must be '*' (schedules cover whole hours)"
    for name, field in zip(_FIELD_NAMES, fields, strict=True):
        if not all(_ITEM.fullmatch(item) for item in field.split(",")):
            return f"{where}: unsupported {name} field {field!r}"
    try:
        expanded = croniter(expression).expanded
    except (CroniterError, ValueError) as exc:
        return f"{where}: {exc}"
    _, hours, doms, months, dows = (_as_set(values) for values in expanded)
    every_hour = frozenset(range(24))
    return HourRange(expression, every_hour if hours is None else hours, doms, months, dows)


def _as_set(values: Sequence[int | str]) -> frozenset[int] | None:
    """croniter's expansion of one field; ['*'] (any value) becomes None."""
    if any(value == "*" for value in values):
        return None
    return frozenset(int(value) for value in values)


# Coder's own reason, for an operator who searches both logs for it.
NO_TIMEZONE = (
    "timezone is not set in prebuild scheduling configuration: the schedules are ignored "
    "and desired_instances applies (as in Coder)"
)


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo | str:
    if name == "":
        return NO_TIMEZONE
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError):
        # zoneinfo signals a bad key by not-found (KeyError), malformed (ValueError) or a
        # directory/overlong path (OSError); all mean the same to an operator.
        return f"unknown scheduling timezone {name!r}"


def _schedule_problems(schedules: Sequence[Schedule], timezone: str) -> list[InputError]:
    """Reasons the set of schedules cannot be used (empty when usable)."""
    problems: list[InputError] = []
    zone = _zone(timezone)
    if isinstance(zone, str):
        problems.append(InputError(InputErrorKind.INVALID_TIMEZONE, zone))
    for schedule in schedules:
        parsed = _parse(schedule.cron_expression)
        if isinstance(parsed, str):
            message = f"schedule {schedule.id}: {parsed}"
            problems.append(InputError(InputErrorKind.INVALID_CRON, message))
    if not problems:
        overlaps = _overlaps(tuple(s.cron_expression for s in schedules))
        problems.extend(InputError(InputErrorKind.OVERLAPPING_SCHEDULES, m) for m in overlaps)
    return problems


@functools.lru_cache(maxsize=1024)
def _overlaps(expressions: tuple[str, ...]) -> tuple[str, ...]:
    """One message per pair of (valid) expressions that cover a common hour of some day."""
    return tuple(
        f"schedules overlap: {a!r} and {b!r} cover a common hour"
        for i, a in enumerate(expressions)
        for b in expressions[i + 1 :]
        if _ranges_overlap(a, b)
    )


def _ranges_overlap(a: str, b: str) -> bool:
    first, second = parse_cron(a), parse_cron(b)
    if not first.hours & second.hours:
        return False
    return bool(_days(a) & _days(b))


# Every (month, day, weekday) that occurs on some calendar: each date, February 29 included,
# falls on each weekday in some year. Enumerating them makes the overlap test exact, including
# day-of-month/day-of-week OR-semantics and impossible dates such as February 30.
_CALENDAR_DAYS = tuple(
    (month, day, weekday)
    for month in range(1, 13)
    for day in range(1, calendar.monthrange(2000, month)[1] + 1)  # 2000: a leap year.
    for weekday in range(7)
)


@functools.lru_cache(maxsize=4096)
def _days(expression: str) -> frozenset[tuple[int, int, int]]:
    parsed = parse_cron(expression)
    return frozenset(day for day in _CALENDAR_DAYS if parsed.covers_day(*day))


# ---------------------------------------------------------------------------------------------
# Evaluation over time.
# ---------------------------------------------------------------------------------------------


def _covering_index(expressions: tuple[str, ...], local: datetime) -> int | None:
    """Index of the first expression covering `local`, None if none does."""
    for index, expression in enumerate(expressions):
        if parse_cron(expression).covers(local):
            return index
    return None


def _next_local_hour(instant: datetime, zone: ZoneInfo) -> datetime:
    """The next instant after `instant` at which the local wall clock shows minute 0.

    Arithmetic is done on the UTC instant, so DST gaps and repeated hours need no special
    case: a transition happens on a local hour boundary, which is where we stand when the
    offset changes, and the step after it is measured from the new wall-clock reading.
    """
    local = instant.astimezone(zone)
    into_hour = timedelta(
        minutes=local.minute, seconds=local.second, microseconds=local.microsecond
    )
    return instant + (_HOUR - into_hour)


@functools.lru_cache(maxsize=4096)
def _scan(
    expressions: tuple[str, ...], timezone: str, first: datetime, current: int | None
) -> datetime | None:
    """First local hour boundary, from `first` on, where the covering schedule differs.

    Cached by the first boundary: every `now` within the same local hour shares the answer.
    """
    zone = resolve_timezone(timezone)
    boundary = first
    while boundary - first <= HORIZON:
        if _covering_index(expressions, boundary.astimezone(zone)) != current:
            return boundary
        boundary = _next_local_hour(boundary, zone)
    return None


def _as_utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def _non_negative(count: int, what: str, errors: list[InputError]) -> int:
    if count >= 0:
        return count
    message = f"{what} is negative ({count}); treated as 0"
    errors.append(InputError(InputErrorKind.NEGATIVE_DESIRED, message))
    return 0
