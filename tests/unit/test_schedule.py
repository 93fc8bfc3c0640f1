"""Schedules as ranges of whole local hours: parsing, coverage, desired counts, next change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from prebuildd.model import InputErrorKind, Schedule
from prebuildd.schedule import (
    HORIZON,
    NO_TIMEZONE,
    ScheduleError,
    covers,
    desired_instances,
    parse_cron,
    resolve_timezone,
)

WEEKDAYS = "* 9-18 * * 1-5"
LA = "America/Los_Angeles"


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def sched(cron: str, desired: int, n: int = 1) -> Schedule:
    return Schedule(id=UUID(int=n), cron_expression=cron, desired_instances=desired)


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        pytest.param("* 9 * *", "expected 5 fields", id="four-fields"),
        pytest.param("* 9 * * * 2025", "expected 5 fields", id="six-fields"),
        pytest.param("", "expected 5 fields", id="empty"),
        pytest.param("@daily", "expected 5 fields", id="descriptor"),
        pytest.param("0 9 * * *", "minute field must be '\\*'", id="minute-zero"),
        pytest.param("0-59 9 * * *", "minute field must be '\\*'", id="minute-full-range"),
        pytest.param("* 24 * * *", "out of range", id="hour-24"),
        pytest.param("* 9 0 * *", "out of range", id="day-zero"),
        pytest.param("* 9 * 13 *", "out of range", id="month-13"),
        pytest.param("* 9 * * 8", "out of range", id="weekday-8"),
        pytest.param("* 9 L * *", "unsupported day-of-month", id="last-day"),
        pytest.param("* 9 * * 5#2", "unsupported day-of-week", id="nth-weekday"),
        pytest.param("* R * * *", "unsupported hour", id="random"),
        pytest.param("* H * * *", "unsupported hour", id="hashed"),
        pytest.param("* nine * * *", "unsupported hour", id="garbage"),
    ],
)
def test_invalid_cron_is_rejected_with_reason(cron: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        parse_cron(cron)


def test_schedule_error_is_a_value_error() -> None:
    assert issubclass(ScheduleError, ValueError)


def test_parse_is_cached() -> None:
    assert parse_cron(WEEKDAYS) is parse_cron(WEEKDAYS)


def test_parsed_fields() -> None:
    parsed = parse_cron("* 22-2 1,15 jan-mar sun")
    assert parsed.hours == frozenset({22, 23, 0, 1, 2})
    assert parsed.days_of_month == frozenset({1, 15})
    assert parsed.months == frozenset({1, 2, 3})
    assert parsed.days_of_week == frozenset({0})


# ---------------------------------------------------------------------------------------------
# Coverage of one instant
# ---------------------------------------------------------------------------------------------


# 2025-06-01 is a Sunday; 2025-06-02 a Monday; 2025-06-07 a Saturday.
@pytest.mark.parametrize(
    ("cron", "local", "expected"),
    [
        pytest.param(WEEKDAYS, datetime(2025, 6, 2, 8, 59, 59), False, id="second-before"),
        pytest.param(WEEKDAYS, datetime(2025, 6, 2, 9, 0, 0), True, id="first-second"),
        pytest.param(WEEKDAYS, datetime(2025, 6, 2, 14, 0), True, id="middle"),
        pytest.param(WEEKDAYS, datetime(2025, 6, 2, 18, 59, 59, 999999), True, id="last-instant"),
        pytest.param(WEEKDAYS, datetime(2025, 6, 2, 19, 0, 0), False, id="second-after"),
        pytest.param(WEEKDAYS, datetime(2025, 6, 7, 14, 0), False, id="saturday"),
        pytest.param(WEEKDAYS, datetime(2025, 6, 1, 14, 0), False, id="sunday"),
        pytest.param("* 9 * * 7", datetime(2025, 6, 1, 9, 30), True, id="weekday-7-is-sunday"),
        pytest.param("* 9 * * 6,0", datetime(2025, 6, 1, 9, 30), True, id="weekday-0-is-sunday"),
        pytest.param("* 22-2 * * *", datetime(2025, 6, 2, 23, 30), True, id="wrap-evening"),
        pytest.param("* 22-2 * * *", datetime(2025, 6, 2, 1, 59), True, id="wrap-morning"),
        pytest.param("* 22-2 * * *", datetime(2025, 6, 2, 3, 0), False, id="wrap-outside"),
        pytest.param("* 9 1 * *", datetime(2025, 6, 1, 9, 0), True, id="day-of-month-only"),
        pytest.param("* 9 1 * *", datetime(2025, 6, 2, 9, 0), False, id="day-of-month-other"),
        # Both day fields restricted: either matches (classic cron OR).
        pytest.param("* 9 1 * 1", datetime(2025, 6, 1, 9, 0), True, id="or-by-day-of-month"),
        pytest.param("* 9 1 * 1", datetime(2025, 6, 2, 9, 0), True, id="or-by-weekday"),
        pytest.param("* 9 1 * 1", datetime(2025, 6, 3, 9, 0), False, id="or-neither"),
        # Only a literal '*' is unrestricted: a full weekday range still ORs with the day.
        pytest.param("* 9 15 * 0-6", datetime(2025, 6, 2, 9, 0), True, id="full-range-is-not-star"),
        pytest.param("* 9 15 * *", datetime(2025, 6, 2, 9, 0), False, id="star-is-unrestricted"),
        pytest.param("* 9 * jan-mar *", datetime(2025, 2, 3, 9, 0), True, id="month-name"),
        pytest.param("* 9 * jan-mar *", datetime(2025, 6, 2, 9, 0), False, id="month-outside"),
    ],
)
def test_covers(cron: str, local: datetime, expected: bool) -> None:
    assert covers(cron, local) is expected


def test_covers_reads_the_wall_clock_of_an_aware_datetime() -> None:
    # 05:00 at UTC-4 is 05:00 on the wall clock: the caller converts to the schedule's zone.
    local = datetime(2025, 6, 2, 5, 0, tzinfo=ZoneInfo("America/New_York"))
    assert not covers(WEEKDAYS, local)
    assert covers(WEEKDAYS, local.replace(hour=9))


def test_covers_invalid_raises() -> None:
    with pytest.raises(ScheduleError):
        covers("0 9 * * *", datetime(2025, 6, 2, 9, 0))


# ---------------------------------------------------------------------------------------------
# Time zones
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "key"), [pytest.param("UTC", "UTC", id="utc"), pytest.param(LA, LA, id="iana")]
)
def test_resolve_timezone(name: str, key: str) -> None:
    assert resolve_timezone(name).key == key


def test_an_empty_timezone_is_no_zone_not_utc() -> None:
    with pytest.raises(ScheduleError, match="timezone is not set"):
        resolve_timezone("")


def test_schedules_without_a_timezone_are_ignored_as_coder_does() -> None:
    """Coder's CalculateDesiredInstances: schedules with scheduling_timezone '' log an error and
    desired_instances applies, even at an instant a schedule covers in UTC (issue 10 item 5)."""
    covering_in_utc = utc(2025, 6, 2, 10)  # a Monday, 10:00 UTC: WEEKDAYS covers it
    assert desired_instances(1, (sched(WEEKDAYS, 4),), "UTC", covering_in_utc).desired == 4
    result = desired_instances(1, (sched(WEEKDAYS, 4),), "", covering_in_utc)
    assert result.desired == 1
    assert result.schedule_id is None
    assert result.next_change is None, "no boundary to wake up for: the schedules are unused"
    assert [e.kind for e in result.errors] == [InputErrorKind.INVALID_TIMEZONE]
    assert NO_TIMEZONE in result.errors[0].message


def test_an_empty_timezone_without_schedules_is_no_error() -> None:
    result = desired_instances(3, (), "", utc(2025, 6, 2, 10))
    assert (result.desired, result.errors) == (3, ())


@pytest.mark.parametrize(
    "name", ["Mars/Olympus", "America", "/etc/passwd", "../x", "utc", "x" * 300]
)
def test_resolve_unknown_timezone(name: str) -> None:
    with pytest.raises(ScheduleError, match="unknown scheduling timezone"):
        resolve_timezone(name)


# ---------------------------------------------------------------------------------------------
# Desired instances
# ---------------------------------------------------------------------------------------------

THREE_A_DAY = (
    sched("* 6-10 * * 1-5", 2, 1),
    sched("* 12-16 * * 1-5", 3, 2),
    sched("* 18-22 * * 1-5", 4, 3),
)
WEEK_AND_WEEKEND = (sched(WEEKDAYS, 2, 1), sched("* 9-13 * * 6,0", 3, 2))


@pytest.mark.parametrize(
    ("schedules", "timezone", "now", "desired", "schedule_n"),
    [
        pytest.param((), "", utc(2025, 6, 2, 9), 1, None, id="no-schedules"),
        pytest.param(THREE_A_DAY, "UTC", utc(2025, 6, 2, 5), 1, None, id="before-first"),
        pytest.param(THREE_A_DAY, "UTC", utc(2025, 6, 2, 8), 2, 1, id="first"),
        pytest.param(THREE_A_DAY, "UTC", utc(2025, 6, 2, 11), 1, None, id="between"),
        pytest.param(THREE_A_DAY, "UTC", utc(2025, 6, 2, 14), 3, 2, id="second"),
        pytest.param(THREE_A_DAY, "UTC", utc(2025, 6, 2, 20), 4, 3, id="third"),
        pytest.param(THREE_A_DAY, "UTC", utc(2025, 6, 2, 23), 1, None, id="after-last"),
        pytest.param(WEEK_AND_WEEKEND, "UTC", utc(2025, 6, 2, 14), 2, 1, id="weekday"),
        pytest.param(WEEK_AND_WEEKEND, "UTC", utc(2025, 6, 7, 10), 3, 2, id="weekend"),
        pytest.param(WEEK_AND_WEEKEND, "UTC", utc(2025, 6, 7, 14), 1, None, id="weekend-after"),
        # America/Los_Angeles is UTC-7 in June.
        pytest.param((sched("* 9-13 * * 1-5", 3),), LA, utc(2025, 6, 2, 15), 1, None, id="la-8am"),
        pytest.param((sched("* 9-13 * * 1-5", 3),), LA, utc(2025, 6, 2, 16), 3, 1, id="la-9am"),
        pytest.param(
            (sched("* 9-13 * * 1-5", 3),), LA, utc(2025, 6, 2, 20, 59, 59), 3, 1, id="la-last"
        ),
        pytest.param((sched("* 9-13 * * 1-5", 3),), LA, utc(2025, 6, 2, 21), 1, None, id="la-2pm"),
        # `now` in another offset is the same instant.
        pytest.param(
            (sched(WEEKDAYS, 3),),
            "UTC",
            datetime(2025, 6, 2, 5, tzinfo=ZoneInfo("America/New_York")),
            3,
            1,
            id="now-not-in-utc",
        ),
    ],
)
def test_desired_instances(
    schedules: tuple[Schedule, ...],
    timezone: str,
    now: datetime,
    desired: int,
    schedule_n: int | None,
) -> None:
    result = desired_instances(1, schedules, timezone, now)
    assert result.desired == desired
    assert result.schedule_id == (None if schedule_n is None else UUID(int=schedule_n))
    assert result.errors == ()


@pytest.mark.parametrize(
    ("schedules", "timezone", "message"),
    [
        pytest.param((sched(WEEKDAYS, 3),), "Mars/Olympus", "unknown scheduling", id="bad-zone"),
        pytest.param((sched("* 9-18 * *", 3),), "UTC", "expected 5 fields", id="bad-cron"),
        pytest.param((sched("0 9-18 * * *", 3),), "UTC", "minute field", id="minute-field"),
        pytest.param(
            (sched(WEEKDAYS, 3, 1), sched("* 9-12 * * 1-5", 2, 2)), "UTC", "overlap", id="overlap"
        ),
        pytest.param(
            (sched(WEEKDAYS, 3, 1), sched("* 18 * * *", 2, 2)), "UTC", "overlap", id="overlap-edge"
        ),
        # Some 1st of a month falls on a Monday.
        pytest.param(
            (sched("* 9 1 * *", 3, 1), sched("* 9 * * 1", 2, 2)),
            "UTC",
            "overlap",
            id="overlap-days",
        ),
        # One good schedule does not rescue a bad one: the whole set falls back.
        pytest.param(
            (sched(WEEKDAYS, 3, 1), sched("* 9 L * *", 2, 2)), "UTC", "unsupported", id="one-bad"
        ),
    ],
)
def test_invalid_input_falls_back_to_default(
    schedules: tuple[Schedule, ...], timezone: str, message: str
) -> None:
    result = desired_instances(1, schedules, timezone, utc(2025, 6, 2, 10))
    assert result.desired == 1
    assert result.schedule_id is None
    assert result.next_change is None
    assert any(message in error.message for error in result.errors), result.errors


def test_bad_cron_error_names_the_schedule() -> None:
    result = desired_instances(1, (sched("0 9 * * *", 3, 7),), "UTC", utc(2025, 6, 2, 10))
    assert str(UUID(int=7)) in result.errors[0].message
    assert result.errors[0].kind is InputErrorKind.INVALID_CRON


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param("* 9 * 1 *", "* 9 * 2 *", id="different-months"),
        pytest.param(WEEKDAYS, "* 9-18 * * 6,0", id="weekdays-vs-weekend"),
        pytest.param("* 0-8 * * *", "* 9-23 * * *", id="adjacent-hours"),
        pytest.param("* 9 31 2 *", "* 9 * * *", id="february-31-never-happens"),
        pytest.param("* 9 30 2 1", "* 9 * 3 *", id="or-days-in-other-months"),
    ],
)
def test_disjoint_schedules_are_valid(first: str, second: str) -> None:
    result = desired_instances(0, (sched(first, 1, 1), sched(second, 2, 2)), "UTC", utc(2025, 6, 2))
    assert result.errors == ()


def test_timezone_is_ignored_without_schedules() -> None:
    result = desired_instances(2, (), "Mars/Olympus", utc(2025, 6, 2))
    assert (result.desired, result.errors, result.next_change) == (2, (), None)


@pytest.mark.parametrize(
    ("default", "schedule_desired", "now", "desired", "errors"),
    [
        pytest.param(-1, None, utc(2025, 6, 2, 10), 0, 1, id="negative-default"),
        pytest.param(2, -3, utc(2025, 6, 2, 10), 0, 1, id="negative-schedule-covering"),
        pytest.param(2, -3, utc(2025, 6, 2, 20), 2, 1, id="negative-schedule-not-covering"),
        pytest.param(-1, -3, utc(2025, 6, 2, 20), 0, 2, id="both-negative"),
    ],
)
def test_negative_counts_are_zero_and_reported(
    default: int, schedule_desired: int | None, now: datetime, desired: int, errors: int
) -> None:
    schedules = () if schedule_desired is None else (sched(WEEKDAYS, schedule_desired),)
    result = desired_instances(default, schedules, "UTC", now)
    assert result.desired == desired
    assert len(result.errors) == errors
    assert all("negative" in e.message for e in result.errors)
    assert all(e.kind is InputErrorKind.NEGATIVE_DESIRED for e in result.errors)


@pytest.mark.parametrize(
    ("schedules", "timezone", "kind"),
    [
        pytest.param((sched("0 9 * * *", 3),), "UTC", InputErrorKind.INVALID_CRON, id="cron"),
        pytest.param((sched(WEEKDAYS, 3),), "Mars/Olympus", InputErrorKind.INVALID_TIMEZONE,
                     id="timezone"),
        pytest.param((sched(WEEKDAYS, 3, 1), sched("* 9 * * *", 2, 2)), "UTC",
                     InputErrorKind.OVERLAPPING_SCHEDULES, id="overlap"),
        pytest.param((sched(WEEKDAYS, -1),), "UTC", InputErrorKind.NEGATIVE_DESIRED, id="negative"),
    ],
)  # fmt: skip
def test_every_error_carries_its_kind(
    schedules: tuple[Schedule, ...], timezone: str, kind: InputErrorKind
) -> None:
    """The kind is typed (the metric label), not parsed back out of the message."""
    result = desired_instances(1, schedules, timezone, utc(2025, 6, 2, 10))
    assert [e.kind for e in result.errors] == [kind], result.errors


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        desired_instances(1, (sched(WEEKDAYS, 2),), "UTC", datetime(2025, 6, 2, 10))


# ---------------------------------------------------------------------------------------------
# Next change
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedules", "timezone", "now", "expected"),
    [
        pytest.param((sched(WEEKDAYS, 3),), "UTC", utc(2025, 6, 2, 10, 17, 23), utc(2025, 6, 2, 19),
                     id="end-of-range"),
        pytest.param((sched(WEEKDAYS, 3),), "UTC", utc(2025, 6, 2, 8, 59, 59), utc(2025, 6, 2, 9),
                     id="start-in-one-second"),
        pytest.param((sched(WEEKDAYS, 3),), "UTC", utc(2025, 6, 2, 9), utc(2025, 6, 2, 19),
                     id="at-start"),
        pytest.param((sched(WEEKDAYS, 3),), "UTC", utc(2025, 6, 6, 19), utc(2025, 6, 9, 9),
                     id="over-the-weekend"),
        pytest.param(THREE_A_DAY, "UTC", utc(2025, 6, 2, 11), utc(2025, 6, 2, 12),
                     id="next-schedule"),
        pytest.param((sched("* * * * *", 3),), "UTC", utc(2025, 6, 2, 11), None, id="always"),
        pytest.param((sched("* 9 1 * *", 3),), "UTC", utc(2025, 6, 2, 11), None,
                     id="beyond-horizon"),
        pytest.param((sched("* 9 * * *", 3),), "Asia/Kolkata", utc(2025, 6, 2, 3),
                     utc(2025, 6, 2, 3, 30), id="half-hour-zone"),
        # Los Angeles springs forward on Sunday 2025-03-09 (02:00 PST -> 03:00 PDT).
        pytest.param((sched("* 9-17 * * 1-5", 3),), LA, utc(2025, 3, 8, 12),
                     utc(2025, 3, 10, 16), id="dst-spring-weekday-start-in-pdt"),
        pytest.param((sched("* 9-17 * * 1-5", 3),), LA, utc(2025, 3, 7, 20),
                     utc(2025, 3, 8, 2), id="dst-spring-friday-end-in-pst"),
        pytest.param((sched("* 2 * * *", 3),), LA, utc(2025, 3, 9, 9, 30),
                     utc(2025, 3, 10, 9), id="dst-spring-skipped-hour"),
        # ... and falls back on Sunday 2025-11-02 (02:00 PDT -> 01:00 PST): 1 am happens twice.
        pytest.param((sched("* 1 * * *", 3),), LA, utc(2025, 11, 2, 7, 30),
                     utc(2025, 11, 2, 8), id="dst-fall-start"),
        pytest.param((sched("* 1 * * *", 3),), LA, utc(2025, 11, 2, 8, 30),
                     utc(2025, 11, 2, 10), id="dst-fall-first-1am"),
        pytest.param((sched("* 1 * * *", 3),), LA, utc(2025, 11, 2, 9, 30),
                     utc(2025, 11, 2, 10), id="dst-fall-second-1am"),
    ],
)  # fmt: skip
def test_next_change(
    schedules: tuple[Schedule, ...], timezone: str, now: datetime, expected: datetime | None
) -> None:
    result = desired_instances(1, schedules, timezone, now)
    assert result.errors == ()
    assert result.next_change == expected
    if expected is not None:
        assert result.next_change is not None and result.next_change.tzinfo is not None


def test_dst_fall_back_covers_both_one_oclocks() -> None:
    schedules = (sched("* 1 * * *", 3),)
    for now in (utc(2025, 11, 2, 8, 30), utc(2025, 11, 2, 9, 30)):
        assert desired_instances(0, schedules, LA, now).desired == 3
    assert desired_instances(0, schedules, LA, utc(2025, 11, 2, 10)).desired == 0


def test_dst_spring_forward_skipped_hour_never_covers() -> None:
    schedules = (sched("* 2 * * *", 3),)
    day = utc(2025, 3, 9, 8)  # 00:00 PST
    covered = [
        desired_instances(0, schedules, LA, day + timedelta(minutes=15 * k)).desired
        for k in range(24 * 4)
    ]
    assert set(covered) == {0}


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------


def _field(low: int, high: int) -> st.SearchStrategy[str]:
    value = st.integers(low, high)
    single = value.map(str)
    span = st.tuples(value, value).map(lambda r: f"{min(r)}-{max(r)}")
    stepped = st.tuples(value, st.integers(1, 5)).map(lambda r: f"{r[0]}-{high}/{r[1]}")
    item = st.one_of(single, span, stepped)
    return st.one_of(st.just("*"), st.lists(item, min_size=1, max_size=3).map(",".join))


CRONS = st.builds(
    lambda h, dom, mon, dow: f"* {h} {dom} {mon} {dow}",
    _field(0, 23),
    _field(1, 31),
    _field(1, 12),
    _field(0, 6),
)
INSTANTS = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2026, 12, 31))
ZONES = st.sampled_from(["UTC", LA, "Asia/Kolkata", "Australia/Lord_Howe", "Europe/London"])


@settings(max_examples=300, deadline=None)
@given(cron=CRONS, local=INSTANTS)
def test_covers_agrees_with_croniter_per_minute(cron: str, local: datetime) -> None:
    minute = local.replace(second=0, microsecond=0)
    assert covers(cron, local) is croniter.match(cron, minute)


@settings(max_examples=60, deadline=None)
@given(cron=CRONS, zone=ZONES, naive=INSTANTS)
def test_next_change_is_the_first_change(cron: str, zone: str, naive: datetime) -> None:
    now = naive.replace(tzinfo=UTC)
    result = desired_instances(0, (sched(cron, 1),), zone, now)
    covered_now = result.schedule_id is not None
    end = result.next_change if result.next_change is not None else now + HORIZON
    # Every local hour boundary in every zone here falls on a UTC quarter hour.
    step = timedelta(minutes=15)
    t = now.replace(minute=now.minute // 15 * 15, second=0, microsecond=0) + step
    points = [now, end - timedelta(microseconds=1)]
    while t < end:
        points.append(t)
        t += step
    for point in points:
        covered = desired_instances(0, (sched(cron, 1),), zone, point).schedule_id is not None
        assert covered is covered_now, point
    if result.next_change is not None:
        assert result.next_change > now
        flipped = desired_instances(0, (sched(cron, 1),), zone, result.next_change)
        assert (flipped.schedule_id is not None) is not covered_now
