"""The demand forecast: how many ready prebuilds a preset needs so that people find one.

Pure: a `DemandHistory` (read by prebuildd.store, cached by prebuildd.demand) and `now` in, a
`Forecast` out. No I/O, no clock.

The model, in four steps:

1. **Rate.** Demand is every time a person wanted a workspace of the preset: a hit (a claim)
   or a miss (a fresh build). Per hour of the week (Monday 00:00 UTC = 0), the rate is the
   demand counted in that hour of the week divided by how many such hours the history
   covers: 14 days of history give two samples of every hour. An hour of the week the
   history never covered (a preset name younger than a week) takes the mean rate of the
   hours that were covered.
2. **Refill time R.** How long a claimed prebuild takes to be replaced: the median time from
   queueing a create to its job's success over the latest successful creates (queueing
   included: a busy provisioner makes refills slower). Without any measurement, 10 minutes.
3. **Expected demand during one refill**, at the busiest moment of the current hour. A claim
   at any moment of [H, H+1h) starts a refill that runs for R, so the peak rate over the
   hours of the week that [H, H + 1h + R) touches, times R. (Little's law: with demand at
   rate λ and each claimed prebuild replaced after R, λR prebuilds are missing on average.)
   Looking into the next hour is what makes a pool grow *before* the morning peak.
4. **Safety margin.** The suggested pool is the smallest k with P(N <= k) >= 95 %, N the
   demand during one refill, so that with k ready a refill period passes without a miss at
   least 95 times in 100. N is not taken as Poisson with the estimated rate: two samples of
   an hour say little about its rate (3 people in 2 hours fit a rate of 0.5/h as well as
   4/h). With k events seen in T hours, demand in the next r hours follows the Poisson-gamma
   predictive, a negative binomial (shape k + 1/2, Jeffreys' prior; success probability
   T / (T + r)), which is wider the less was seen and tends to Poisson(k r / T) as T grows.
   The hour that step 3 picks is the one whose quantile is highest.

Everything is constant within an hour (the history ends at the hour boundary, step 3 looks at
whole hours), which is why the planner asks to look again at the next boundary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prebuildd.model import HOURS_PER_WEEK, DemandHistory

__all__ = [
    "Forecast",
    "ForecastConfig",
    "empty_history",
    "forecast",
    "history_window",
    "hour_floor",
    "hour_name",
    "hour_of_week",
    "hourly_rates",
    "hours_covered",
    "next_hour",
    "predictive_quantile",
]

_HOUR = timedelta(hours=1)
_WEEK = timedelta(days=7)
# Monday 2024-01-01 00:00 UTC: hour-of-week arithmetic counts whole hours from a Monday.
_MONDAY = datetime(2024, 1, 1, tzinfo=UTC)
_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True, slots=True)
class ForecastConfig:
    """Knobs of the forecast (fixed by the service; benches and tests may vary them)."""

    # How far back demand and build durations are read.
    history: timedelta = timedelta(days=14)
    # Probability that a refill period passes without a miss (the predictive's quantile).
    service_level: float = 0.95
    # Shape of the gamma prior on an hour's rate (Jeffreys' prior for a Poisson rate).
    prior_shape: float = 0.5
    # Refill time assumed until one successful create was measured.
    default_refill: timedelta = timedelta(minutes=10)

    def __post_init__(self) -> None:
        if not 0.0 < self.service_level < 1.0:
            raise ValueError(f"service_level must be in (0, 1), not {self.service_level}")
        if self.history < _HOUR:
            raise ValueError("history must cover at least an hour")
        if self.default_refill <= timedelta(0):
            raise ValueError("default_refill must be positive")
        if self.prior_shape <= 0:
            raise ValueError("prior_shape must be positive")


@dataclass(frozen=True, slots=True)
class Forecast:
    """The forecast of one (template, preset name) for the hour containing `now`."""

    # Pool size that covers demand during one refill with the configured service level.
    suggested: int
    # Expected demand (hits + misses) during one refill at the peak hour's estimated rate.
    expected: float
    # That hour of the week (the one needing most prebuilds) and its estimated rate per hour.
    peak_rate: float
    peak_hour: int
    refill: timedelta
    # Successful creates the refill time was measured from (0: the default was assumed).
    refill_samples: int
    # Demand in the whole history and the hours it covered.
    demand: int
    hours: int
    # The instant from which the forecast may differ (the next hour boundary).
    valid_until: datetime
    # The share of refills `suggested` lets pass without a miss.
    service_level: float = 0.95

    def explain(self) -> str:
        """One line for `reconcile --dry-run` and logs."""
        if self.refill_samples:
            refill = f"refill {_duration(self.refill)} (median of {self.refill_samples} builds)"
        else:
            refill = f"refill {_duration(self.refill)} (assumed: no successful build measured)"
        return (
            f"forecast: {self.demand} claim(s)+miss(es) in {self.hours} h of history; peak "
            f"{self.peak_rate:.2f}/h ({hour_name(self.peak_hour)}); {refill}; expected "
            f"{self.expected:.2f} during a refill -> {self.suggested} ready "
            f"({self.service_level:.0%} of refills without a miss, the rate's uncertainty "
            f"included)"
        )


def hour_floor(when: datetime) -> datetime:
    """The start of the hour containing `when` (timezone-aware, returned in UTC)."""
    utc = when.astimezone(UTC)
    return utc.replace(minute=0, second=0, microsecond=0)


def next_hour(when: datetime) -> datetime:
    return hour_floor(when) + _HOUR


def hour_of_week(when: datetime) -> int:
    """0 for Monday 00:00-00:59 UTC ... 167 for Sunday 23:00-23:59 UTC."""
    hours = (hour_floor(when) - _MONDAY) // _HOUR
    return int(hours % HOURS_PER_WEEK)


def hour_name(bucket: int) -> str:
    day, hour = divmod(bucket % HOURS_PER_WEEK, 24)
    return f"{_DAY_NAMES[day]} {hour:02d}:00 UTC"


def history_window(
    now: datetime, config: ForecastConfig | None = None
) -> tuple[datetime, datetime]:
    """[since, until) of the history read at `now`: whole hours, the current one excluded."""
    until = hour_floor(now)
    return until - (config or ForecastConfig()).history, until


def empty_history(now: datetime, config: ForecastConfig | None = None) -> DemandHistory:
    since, until = history_window(now, config)
    zeros = (0,) * HOURS_PER_WEEK
    return DemandHistory(since=since, until=until, hits=zeros, misses=zeros)


def hours_covered(since: datetime, until: datetime) -> tuple[int, ...]:
    """How many whole hours of each hour of the week lie in [since, until).

    A partial first hour does not count (the history of a preset name younger than the window
    starts with the hour after its first version appeared).
    """
    start = hour_floor(since)
    if start < since:
        start += _HOUR
    end = hour_floor(until)
    total = max(0, (end - start) // _HOUR)
    weeks, rest = divmod(total, HOURS_PER_WEEK)
    counts = [weeks] * HOURS_PER_WEEK
    first = hour_of_week(start) if total else 0
    for offset in range(rest):
        counts[(first + offset) % HOURS_PER_WEEK] += 1
    return tuple(counts)


def hourly_rates(history: DemandHistory) -> tuple[float, ...]:
    """Demand per hour for each hour of the week (step 1 of the model)."""
    _check(history.hits, "hits")
    _check(history.misses, "misses")
    covered = hours_covered(history.since, history.until)
    demand = [h + m for h, m in zip(history.hits, history.misses, strict=True)]
    observed_hours = sum(covered)
    observed_demand = sum(d for d, c in zip(demand, covered, strict=True) if c)
    mean = observed_demand / observed_hours if observed_hours else 0.0
    return tuple(d / c if c else mean for d, c in zip(demand, covered, strict=True))


def predictive_quantile(
    events: float, hours: float, window: float, level: float, prior_shape: float = 0.5
) -> int:
    """The smallest k with P(N <= k) >= level, N the events of the next `window` hours at a
    rate of which `events` in `hours` is all that is known (step 4 of the model).

    N is negative binomial with shape `events + prior_shape` and success probability
    `hours / (hours + window)`. Nothing observed (`hours` 0) or nothing to cover (`window` 0)
    gives 0.
    """
    for name, value in (("events", events), ("hours", hours), ("window", window)):
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"{name} must be finite and >= 0, not {value}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), not {level}")
    if prior_shape <= 0:
        raise ValueError(f"prior_shape must be positive, not {prior_shape}")
    if hours == 0 or window == 0:
        return 0
    shape = events + prior_shape
    log_p, log_q = math.log(hours / (hours + window)), math.log(window / (hours + window))
    base = shape * log_p - math.lgamma(shape)
    # Summed in log space (p^shape underflows for large counts; each term does not), up to
    # far beyond the mean: shape * q / p, variance shape * q / p^2.
    mean = shape * window / hours
    limit = int(mean + 60 * math.sqrt(mean * (hours + window) / hours) + 60)
    cdf = 0.0
    for k in range(limit + 1):
        cdf += math.exp(base + math.lgamma(k + shape) - math.lgamma(k + 1) + k * log_q)
        if cdf >= level:
            return k
    return limit  # rounding kept the sum a hair below level: the tail beyond is negligible


def forecast(
    history: DemandHistory, now: datetime, config: ForecastConfig | None = None
) -> Forecast:
    """The forecast for the hour containing `now` (timezone-aware)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    config = config or ForecastConfig()
    rates = hourly_rates(history)
    if history.refill_seconds is not None and history.refill_seconds > 0:
        refill = timedelta(seconds=history.refill_seconds)
        samples = history.refill_samples
    else:
        refill, samples = config.default_refill, 0
    hour = hour_floor(now)
    window = refill / _HOUR
    evidence = _evidence(history)
    # Buckets touched by [hour, hour + 1h + refill): the current one and ceil(refill / 1h) more.
    reach = 1 + math.ceil(window)
    first = hour_of_week(hour)
    buckets = [(first + k) % HOURS_PER_WEEK for k in range(min(reach, HOURS_PER_WEEK))]
    needed = {
        b: predictive_quantile(*evidence[b], window, config.service_level, config.prior_shape)
        for b in buckets
    }
    peak_hour = buckets[0]
    for bucket in buckets[1:]:
        # The hour needing most; ties: the higher rate, then the earliest hour.
        if (needed[bucket], rates[bucket]) > (needed[peak_hour], rates[peak_hour]):
            peak_hour = bucket
    covered = hours_covered(history.since, history.until)
    return Forecast(
        suggested=needed[peak_hour],
        expected=rates[peak_hour] * window,
        peak_rate=rates[peak_hour],
        peak_hour=peak_hour,
        refill=refill,
        refill_samples=samples,
        demand=sum(history.hits) + sum(history.misses),
        hours=sum(covered),
        valid_until=hour + _HOUR,
        service_level=config.service_level,
    )


def _evidence(history: DemandHistory) -> list[tuple[int, int]]:
    """(demand seen, hours covered) behind each hour of the week's rate: its own, or, for an
    hour the history never covered, that of every covered hour (step 1)."""
    covered = hours_covered(history.since, history.until)
    demand = [h + m for h, m in zip(history.hits, history.misses, strict=True)]
    seen = sum(d for d, c in zip(demand, covered, strict=True) if c)
    total = sum(covered)
    return [(d, c) if c else (seen, total) for d, c in zip(demand, covered, strict=True)]


def _check(counts: Sequence[int], what: str) -> None:
    if len(counts) != HOURS_PER_WEEK:
        raise ValueError(f"{what} must have {HOURS_PER_WEEK} hourly counts, not {len(counts)}")
    if any(c < 0 for c in counts):
        raise ValueError(f"{what} must not be negative")


def _duration(span: timedelta) -> str:
    seconds = round(span.total_seconds())
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
