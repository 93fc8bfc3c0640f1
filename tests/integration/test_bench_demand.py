"""bench/demand.py's simulation, small, on the test database: the real reconciler, claim and
forecast in simulated time, and prebuildd's hit/miss accounting equal to the simulation's own
tally. No timing and no verdict here: the figures come from the bench (docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

# bench/ lives at the repository root, which is not on sys.path under the pytest script.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.demand import DAY, START, WEEK, Pool, arrivals, prepare, run_pool


def test_arrivals_follow_the_weekday_curve_and_the_seed() -> None:
    week = arrivals(START, START + WEEK, seed=7)
    assert week == arrivals(START, START + WEEK, seed=7)
    assert week != arrivals(START, START + WEEK, seed=8)
    assert week == sorted(week) and all(START <= t < START + WEEK for t in week)
    weekday_peak = [t for t in week if t.weekday() < 5 and 8 <= t.hour < 12]
    nights = [t for t in week if t.weekday() < 5 and t.hour < 7]
    assert len(weekday_peak) > 5 * len(nights)


def test_a_short_simulation_accounts_every_hit_and_miss(db_url: str) -> None:
    pool = Pool("auto", 1, ("auto", 0, 4))
    prepare(db_url, pool)
    end = START + 2 * DAY
    people = arrivals(START, end, seed=3)
    result = asyncio.run(run_pool(db_url, pool, people, START, end))
    assert result.people == len(people) > 20
    assert result.hits > 0 and result.misses > 0 and result.created > 0
    assert (result.db_hits, result.db_misses) == (result.hits, result.misses)
    assert result.ran
    # Never above the policy's max, never below the template's count.
    assert result.suggested and min(result.suggested) >= 1 and max(result.suggested) <= 4
