"""The demand forecast and the sizing rule, as pure functions (prebuildd.forecast, .autoscale)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from uuid import uuid4
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prebuildd.autoscale import PolicyError, check_bounds, parse_mode, size_pool
from prebuildd.forecast import (
    ForecastConfig,
    empty_history,
    forecast,
    history_window,
    hour_floor,
    hour_of_week,
    hourly_rates,
    hours_covered,
    next_hour,
    predictive_quantile,
)
from prebuildd.model import (
    HOURS_PER_WEEK,
    AutoscaleMode,
    AutoscalePolicy,
    Create,
    Delete,
    DemandHistory,
    PlanConfig,
    Preset,
    PresetSnapshot,
    RunningPrebuild,
    Schedule,
)
from prebuildd.plan import plan_preset

# A Monday, 08:20 UTC: hour of week 8.
MONDAY_0820 = datetime(2025, 6, 2, 8, 20, tzinfo=UTC)
TEMPLATE = uuid4()


def counts(**by_hour: int) -> tuple[int, ...]:
    """168 hourly counts; keyword h<N>=count sets hour of week N."""
    values = [0] * HOURS_PER_WEEK
    for key, value in by_hour.items():
        values[int(key.removeprefix("h"))] = value
    return tuple(values)


def history(
    now: datetime = MONDAY_0820,
    *,
    hits: tuple[int, ...] | None = None,
    misses: tuple[int, ...] | None = None,
    refill: float | None = 600.0,
    samples: int = 10,
    since: datetime | None = None,
) -> DemandHistory:
    start, until = history_window(now)
    return DemandHistory(
        since=since or start,
        until=until,
        hits=hits or counts(),
        misses=misses or counts(),
        refill_seconds=refill,
        refill_samples=samples if refill is not None else 0,
    )


def policy(
    mode: AutoscaleMode = AutoscaleMode.AUTO, lo: int = 0, hi: int = 10
) -> AutoscalePolicy:
    return AutoscalePolicy(TEMPLATE, "small", mode, lo, hi)


# ---- time arithmetic ------------------------------------------------------------------------


def test_hour_of_week_counts_from_monday_midnight_utc() -> None:
    assert hour_of_week(datetime(2025, 6, 2, 0, 0, tzinfo=UTC)) == 0  # Monday
    assert hour_of_week(MONDAY_0820) == 8
    assert hour_of_week(datetime(2025, 6, 8, 23, 59, 59, tzinfo=UTC)) == 167  # Sunday
    assert hour_of_week(datetime(2025, 6, 9, 0, 0, tzinfo=UTC)) == 0
    # The same instant in another zone is the same hour of the week.
    paris = datetime(2025, 6, 2, 10, 20, tzinfo=UTC).astimezone(ZoneInfo("Europe/Paris"))
    assert hour_of_week(paris) == 10


def test_history_window_is_whole_hours_ending_at_the_current_hour() -> None:
    since, until = history_window(MONDAY_0820)
    assert until == datetime(2025, 6, 2, 8, 0, tzinfo=UTC)
    assert since == until - timedelta(days=14)
    assert next_hour(MONDAY_0820) == datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
    assert hour_floor(MONDAY_0820) == until


def test_fourteen_days_cover_every_hour_of_the_week_twice() -> None:
    since, until = history_window(MONDAY_0820)
    assert hours_covered(since, until) == (2,) * HOURS_PER_WEEK


def test_a_younger_history_covers_what_it_covers_and_a_partial_hour_not_at_all() -> None:
    until = datetime(2025, 6, 2, 8, 0, tzinfo=UTC)
    covered = hours_covered(until - timedelta(hours=3, minutes=30), until)
    # 04:30 -> 08:00: 05, 06, 07 (the partial 04:xx does not count).
    assert [h for h, c in enumerate(covered) if c] == [5, 6, 7]
    assert sum(covered) == 3
    assert sum(hours_covered(until, until)) == 0
    assert sum(hours_covered(until + timedelta(hours=1), until)) == 0


@given(
    st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
    ),
    st.integers(min_value=0, max_value=24 * 40),
)
def test_hours_covered_sum_to_the_whole_hours_of_the_window(start: datetime, hours: int) -> None:
    end = hour_floor(start) + timedelta(hours=hours)
    covered = hours_covered(start, end)
    whole = hours - (1 if start != hour_floor(start) and hours > 0 else 0)
    assert sum(covered) == max(whole, 0)
    assert max(covered) - min(covered) <= 1


# ---- rates --------------------------------------------------------------------------------


def test_rate_is_demand_per_covered_hour_hits_and_misses_alike() -> None:
    rates = hourly_rates(history(hits=counts(h8=3), misses=counts(h8=1, h9=4)))
    assert rates[8] == 2.0  # 4 over two Mondays 08:00
    assert rates[9] == 2.0
    assert rates[10] == 0.0


def test_hours_the_history_never_covered_take_the_mean_of_those_it_did() -> None:
    # A preset name 10 hours old: hours 22 (Sunday) .. 7 (Monday) covered once each.
    now = MONDAY_0820
    young = history(now, hits=counts(h2=5, h3=5), since=hour_floor(now) - timedelta(hours=10))
    rates = hourly_rates(young)
    assert rates[2] == 5.0 and rates[3] == 5.0 and rates[5] == 0.0
    assert rates[12] == pytest.approx(10 / 10)  # never covered: 10 demand over 10 hours


def test_no_history_at_all_means_no_demand() -> None:
    empty = history(since=hour_floor(MONDAY_0820))
    assert hourly_rates(empty) == (0.0,) * HOURS_PER_WEEK
    assert forecast(empty, MONDAY_0820).suggested == 0


def test_bad_histories_are_refused() -> None:
    with pytest.raises(ValueError, match="168"):
        hourly_rates(history(hits=(1, 2, 3)))
    with pytest.raises(ValueError, match="negative"):
        hourly_rates(history(misses=counts(h1=-1)))


# ---- the margin: the predictive quantile ----------------------------------------------------


def _predictive_cdf(events: float, hours: float, window: float, n: int) -> float:
    """P(N <= n), N negative binomial (shape events + 1/2, p = hours / (hours + window)),
    summed by the textbook recurrence (fine for the moderate counts used here)."""
    shape, p = events + 0.5, hours / (hours + window)
    term = p**shape
    total = term
    for k in range(n):
        term *= (k + shape) / (k + 1) * (1 - p)
        total += term
    return total


def test_predictive_quantile_known_values() -> None:
    # Nothing observed, or nothing to cover: nothing needed.
    assert predictive_quantile(0, 0, 1.0, 0.95) == 0
    assert predictive_quantile(5, 2, 0.0, 0.95) == 0
    # No demand in two hours: a 10-minute refill needs none, a 20-minute one needs one (two
    # empty hours do not rule out a rate of 1/h).
    assert predictive_quantile(0, 2, 1 / 6, 0.95) == 0
    assert predictive_quantile(0, 2, 1 / 3, 0.95) == 1
    # Much evidence: the Poisson quantile of the rate (Poisson(1): P(N<=2)=.920, <=3 .981).
    assert predictive_quantile(10**6, 10**6, 1.0, 0.95) == 3
    # Little evidence of the same rate: a wider margin.
    assert predictive_quantile(2, 2, 1.0, 0.95) > 3
    # Large counts do not underflow: close to mean + 1.645 sd.
    big = predictive_quantile(10**5, 100, 1.0, 0.95)
    assert abs(big - (1000 + 1.645 * math.sqrt(1000 * 1.01))) < 3


@given(
    st.integers(min_value=0, max_value=200),
    st.integers(min_value=1, max_value=400),
    st.floats(min_value=0.01, max_value=5.0),
    st.floats(min_value=0.05, max_value=0.99),
)
def test_predictive_quantile_is_the_smallest_k_reaching_the_level(
    events: int, hours: int, window: float, level: float
) -> None:
    k = predictive_quantile(events, hours, window, level)
    assert _predictive_cdf(events, hours, window, k) >= level - 1e-9
    assert k == 0 or _predictive_cdf(events, hours, window, k - 1) < level + 1e-9


@given(
    st.integers(min_value=0, max_value=30),
    st.integers(min_value=1, max_value=24),
    st.floats(min_value=0.05, max_value=2.0),
)
def test_more_evidence_of_the_same_rate_never_needs_more(
    events: int, hours: int, window: float
) -> None:
    needed = [predictive_quantile(events * c, hours * c, window, 0.95) for c in (1, 2, 4, 16)]
    assert needed == sorted(needed, reverse=True)


def test_predictive_quantile_refuses_nonsense() -> None:
    for events, hours, window, level in (
        (-1.0, 1.0, 1.0, 0.5), (1.0, math.inf, 1.0, 0.5), (1.0, 1.0, -1.0, 0.5),
        (1.0, 1.0, 1.0, 0.0), (1.0, 1.0, 1.0, 1.0),
    ):  # fmt: skip
        with pytest.raises(ValueError):
            predictive_quantile(events, hours, window, level)
    with pytest.raises(ValueError):
        predictive_quantile(1, 1, 1, 0.5, prior_shape=0)


# ---- the forecast -------------------------------------------------------------------------


def test_expected_demand_during_a_refill_at_the_hours_peak() -> None:
    # 12 per Monday 08:00 over two weeks = 6/h; refill 10 min -> 1.0 expected -> 3 at 95 %
    # (the same as Poisson(1) here: 12 events are good evidence of the rate).
    f = forecast(history(hits=counts(h8=12)), MONDAY_0820)
    assert f.peak_rate == 6.0 and f.peak_hour == 8
    assert f.expected == pytest.approx(1.0)
    assert f.suggested == 3
    assert f.refill == timedelta(minutes=10) and f.refill_samples == 10
    assert f.valid_until == datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
    assert "peak 6.00/h (Mon 08:00 UTC)" in f.explain()
    assert "95% of refills without a miss" in f.explain()


def test_the_forecast_looks_into_the_hours_a_refill_reaches() -> None:
    # At 08:xx a 10-minute refill may end in 09:xx: the 9 o'clock peak counts already.
    busy_at_nine = history(misses=counts(h9=24))
    assert forecast(busy_at_nine, MONDAY_0820).peak_hour == 9
    assert forecast(busy_at_nine, MONDAY_0820).expected == pytest.approx(2.0)
    # A 90-minute refill reaches 10:xx too.
    busy_at_ten = history(misses=counts(h10=24), refill=5400.0)
    assert forecast(busy_at_ten, MONDAY_0820).peak_hour == 10
    # ... but a 10-minute one does not.
    assert forecast(history(misses=counts(h10=24)), MONDAY_0820).suggested == 0


def test_an_unmeasured_refill_time_is_the_configured_default() -> None:
    f = forecast(history(hits=counts(h8=12), refill=None), MONDAY_0820)
    assert f.refill == ForecastConfig().default_refill and f.refill_samples == 0
    assert "assumed" in f.explain()
    slow = ForecastConfig(default_refill=timedelta(minutes=30))
    assert forecast(history(hits=counts(h8=12), refill=None), MONDAY_0820, slow).expected == 3.0


def test_the_forecast_is_constant_within_the_hour() -> None:
    h = history(hits=counts(h8=12, h9=2))
    at = [MONDAY_0820.replace(minute=m, second=s) for m, s in ((0, 0), (20, 0), (59, 59))]
    assert len({forecast(h, t).suggested for t in at}) == 1


def test_the_forecast_needs_an_aware_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        forecast(history(), MONDAY_0820.replace(tzinfo=None))


def test_forecast_config_is_checked() -> None:
    with pytest.raises(ValueError):
        ForecastConfig(service_level=1.0)
    with pytest.raises(ValueError):
        ForecastConfig(default_refill=timedelta(0))
    with pytest.raises(ValueError):
        ForecastConfig(prior_shape=0.0)


# ---- the sizing rule ----------------------------------------------------------------------


def test_without_a_policy_or_with_mode_off_the_configured_count_stands() -> None:
    busy = history(hits=counts(h8=60))
    assert size_pool(2, None, busy, MONDAY_0820).desired == 2
    off = size_pool(2, policy(AutoscaleMode.OFF), busy, MONDAY_0820)
    assert (off.desired, off.suggested, off.next_change, off.reasons) == (2, None, None, ())


def test_auto_follows_the_forecast_within_min_and_max() -> None:
    busy = history(hits=counts(h8=12))  # suggests 3
    sized = size_pool(1, policy(lo=0, hi=10), busy, MONDAY_0820)
    assert (sized.desired, sized.suggested) == (3, 3)
    assert sized.next_change == next_hour(MONDAY_0820)
    assert any("auto: desired 1 -> 3" in r for r in sized.reasons)
    # Never above max.
    assert size_pool(1, policy(hi=2), busy, MONDAY_0820).desired == 2
    # Min raises a quiet pool.
    assert size_pool(0, policy(lo=2, hi=5), history(), MONDAY_0820).desired == 2


def test_auto_never_goes_below_what_the_template_configured() -> None:
    quiet = history()
    assert size_pool(4, policy(hi=10), quiet, MONDAY_0820).desired == 4
    # Configured above max: the template's count is kept, and said.
    kept = size_pool(4, policy(hi=2), history(hits=counts(h8=60)), MONDAY_0820)
    assert kept.desired == 4 and kept.suggested == 4
    assert any("above the policy's max 2" in r for r in kept.reasons)


def test_forecast_mode_reports_and_does_not_act() -> None:
    busy = history(hits=counts(h8=12))
    sized = size_pool(1, policy(AutoscaleMode.FORECAST), busy, MONDAY_0820)
    assert (sized.desired, sized.suggested) == (1, 3)
    assert any("not acting" in r for r in sized.reasons)


def test_a_policy_without_history_sizes_from_nothing() -> None:
    sized = size_pool(1, policy(lo=0, hi=5), None, MONDAY_0820)
    assert (sized.desired, sized.suggested) == (1, 1)
    assert empty_history(MONDAY_0820).until == hour_floor(MONDAY_0820)


@given(
    configured=st.integers(min_value=0, max_value=50),
    lo=st.integers(min_value=0, max_value=50),
    span=st.integers(min_value=0, max_value=50),
    demand=st.integers(min_value=0, max_value=500),
    mode=st.sampled_from(list(AutoscaleMode)),
)
def test_sizing_bounds_hold_for_any_input(
    configured: int, lo: int, span: int, demand: int, mode: AutoscaleMode
) -> None:
    hi = lo + span
    demanded = history(hits=counts(h8=demand))
    sized = size_pool(configured, policy(mode, lo, hi), demanded, MONDAY_0820)
    assert sized.desired >= configured  # never below what the template configured
    if mode is AutoscaleMode.AUTO:
        assert sized.desired <= max(hi, configured)  # never above max (unless configured is)
        assert sized.desired >= min(lo, hi)
    else:
        assert sized.desired == configured
    if mode is not AutoscaleMode.OFF:
        assert sized.suggested is not None and configured <= sized.suggested <= max(hi, configured)


# ---- policy input -------------------------------------------------------------------------


def test_policy_bounds_and_modes_are_checked() -> None:
    check_bounds(0, 0)
    check_bounds(1, 5)
    for lo, hi, words in ((-1, 5, "--min"), (0, -2, "--max"), (3, 2, "must not exceed")):
        with pytest.raises(PolicyError, match=words):
            check_bounds(lo, hi)
    assert parse_mode("auto") is AutoscaleMode.AUTO
    with pytest.raises(PolicyError, match="off, forecast, auto"):
        parse_mode("sometimes")


# ---- in the planner -----------------------------------------------------------------------

PRESET_ID, VERSION_ID = uuid4(), uuid4()


def snapshot(
    *,
    desired: int = 1,
    running: int = 0,
    policy_: AutoscalePolicy | None = None,
    demand: DemandHistory | None = None,
    active: bool = True,
    schedules: tuple[Schedule, ...] = (),
) -> PresetSnapshot:
    preset = Preset(
        id=PRESET_ID,
        name="small",
        template_id=TEMPLATE,
        template_name="python",
        organization_id=uuid4(),
        organization_name="org",
        template_version_id=VERSION_ID,
        template_version_name="v1",
        using_active_version=active,
        template_deleted=False,
        template_deprecated=False,
        desired_instances=desired,
        # Coder ignores schedules of a preset without a scheduling timezone; so do we.
        scheduling_timezone="UTC",
    )
    born = MONDAY_0820 - timedelta(hours=1)
    pool = tuple(
        RunningPrebuild(uuid4(), f"p{i}", VERSION_ID, PRESET_ID, born, True)
        for i in range(running)
    )
    return PresetSnapshot(preset, schedules, pool, policy=policy_, demand=demand)


def test_auto_plans_creates_up_to_the_suggested_size_and_wakes_at_the_hour() -> None:
    busy = history(hits=counts(h8=12))  # suggests 3
    ps = snapshot(desired=1, running=1, policy_=policy(), demand=busy)
    plan = plan_preset(ps, MONDAY_0820, PlanConfig())
    assert plan.actions == (Create(PRESET_ID, VERSION_ID, 2),)
    assert (plan.state.desired, plan.state.suggested, plan.state.configured) == (3, 3, 1)
    assert plan.next_attention == next_hour(MONDAY_0820)
    assert any(r.startswith("forecast:") for r in plan.reasons)
    assert any("create 2 to reach desired 3" in r for r in plan.reasons)


def test_auto_shrinks_back_when_the_forecast_drops_but_not_below_configured() -> None:
    quiet = history()
    ps = snapshot(desired=1, running=3, policy_=policy(), demand=quiet)
    plan = plan_preset(ps, MONDAY_0820, PlanConfig())
    assert [type(a) for a in plan.actions] == [Delete]
    assert plan.state.desired == 1 and plan.state.surplus == 2


def test_auto_counts_the_schedule_covering_now_as_configured() -> None:
    # 08:xx on a Monday is covered: the schedule's 4 is what the template configured.
    rush = (Schedule(uuid4(), "* 8-9 * * 1-5", 4),)
    plan = plan_preset(
        snapshot(desired=1, policy_=policy(hi=10), demand=history(), schedules=rush),
        MONDAY_0820,
        PlanConfig(),
    )
    assert (plan.state.desired, plan.state.configured) == (4, 4)


def test_forecast_mode_plans_exactly_what_it_would_without_a_policy() -> None:
    busy = history(hits=counts(h8=12))
    with_policy = plan_preset(
        snapshot(desired=1, policy_=policy(AutoscaleMode.FORECAST), demand=busy),
        MONDAY_0820,
        PlanConfig(),
    )
    without = plan_preset(snapshot(desired=1), MONDAY_0820, PlanConfig())
    assert with_policy.actions == without.actions == (Create(PRESET_ID, VERSION_ID, 1),)
    assert with_policy.state.desired == 1 and with_policy.state.suggested == 3
    assert without.state.suggested is None and without.state.configured is None


def test_inactive_presets_ignore_policies() -> None:
    plan = plan_preset(
        snapshot(desired=1, running=1, policy_=policy(lo=5, hi=9), demand=history(), active=False),
        MONDAY_0820,
        PlanConfig(),
    )
    assert plan.state.desired == 0 and plan.state.suggested is None
    assert plan.next_attention is None
