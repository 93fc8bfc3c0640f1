"""Demand-aware pools: a weekday demand curve replayed against the real reconciler, side by side.

Three weeks of simulated time (two with --quick) on a bench database: people arrive at a
weekday rate curve (a Poisson process, the same arrivals for every pool); each one claims a
ready prebuild of the preset (a *hit*, through the real claim query) or, when none is ready,
gets a workspace built from scratch (a *miss*, the rows Coder writes). After every event --
an arrival, a job the simulated provisioner finished, a timer the planner asked for -- the real
`Reconciler` reconciles the template, through the real store, planner and forecast. prebuildd
runs on the database's clock (`now()`, read with every snapshot), so the bench makes the
database's clock the simulation's for its own session: `now()` and `clock_timestamp()` resolve
to functions of a schema listed before pg_catalog in that session's search_path, which return
the simulated instant (bench/sql/demand.sql, demand_sim_clock). Every row the reconciler writes
carries simulated time, so the forecast reads a simulated history. The provisioner
finishes a create (and a miss's fresh build) BUILD after it was queued, a claim's build or a
delete SHORT after; its capacity is unbounded.

The pools compared, on the same arrivals:
  off, desired 1        the template's fixed count, small;
  off, desired 2        a fixed count costing about what `auto` costs (idle prebuild-hours);
  off, desired PEAK     a fixed count sized for the weekday peak;
  auto                  the template configures 1, the policy allows 0..MAX; the forecast sizes it.
Measured over the last simulated week (the earlier weeks are the forecast's history): hit
rate (claims / people), idle prebuild-hours (running, unclaimed prebuilds x time), people's
wait (a hit waits SHORT, a miss BUILD), prebuilds created. The hits and misses are also read
back from the database through `prebuildd status`'s query and must equal the simulation's own
tally: the bench checks prebuildd's demand accounting on every event.

Verdict: the simulation ran (people arrived, claims happened, prebuilds were created, the
database's count of hits and misses matches); for no more idle prebuild-hours than the fixed
pool of 2, `auto` serves more people; and it costs at most half of the peak-sized pool's idle
prebuild-hours (how many fewer people it serves than that pool is reported). Exit 1
otherwise.

`--part reads` measures instead what demand costs the reads of a big fleet (`spec`: 1,000
templates, 15k presets, 124k workspaces; on a clone where every person's build names a preset,
as Coder's do, and template 1 is busy: 1,000 more workspaces started and stopped twice a day
for 14 days), side by side and interleaved:
  * the metrics refresh's global reads: `prebuild_metrics` (Coder's totals) and
    `demand_totals` (misses, time saved), every 15 s on every replica;
  * one targeted reconcile (read + plan) of the busy template: without a policy, with an
    `auto` policy whose history is cached (every reconcile but one an hour), and with a cold
    cache (the hourly read of 14 days of demand).
Verdict: the cached reconcile stays within SPEC 7's 10 ms and within 1.5x of the one without a
policy; the other figures are reported (with what the hourly read went through).

    PYTHONPATH=service python -m bench.demand [--quick] [--seed N] [--part sim|reads] [--reuse]

The reads part seeds (or, with --reuse, reuses) bench/fleet.py's `spec` fleet and applies this
checkout's migrations to it: give it a PREBUILDD_BENCH_DIR of its own while other checkouts
share the default one.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import heapq
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg

from bench._common import CpuMeter, ServiceErrors, Stats, print_header, table, verdict
from bench._server import BenchServer, bench_server, print_server
from bench._sql import bench_query
from bench.fleet import SCALES, ensure_fleet, preset_id, template_id
from prebuildd import store
from prebuildd.claim import claim_async
from prebuildd.migrate import migrate
from prebuildd.model import PlanConfig
from prebuildd.queries import query
from prebuildd.reconciler import Cause, Reconciler
from prebuildd.trigger import Trigger

# A Monday 00:00 UTC: the simulation starts the week there.
START = datetime(2025, 1, 6, tzinfo=UTC)
HOUR, MINUTE, DAY, WEEK = (
    timedelta(hours=1), timedelta(minutes=1), timedelta(days=1), timedelta(days=7),
)  # fmt: skip
BUILD = 20 * MINUTE
SHORT = 1 * MINUTE
USERS = 40
PEAK = 5
MAX = 10
# People per hour on a weekday, by hour of the day (UTC); weekends: WEEKEND all day.
WEEKDAY = (
    0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 1.0,  # 00-07
    6.0, 4.0, 4.0, 4.0, 2.0, 3.0, 3.0, 3.0,  # 08-15
    3.0, 1.0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2,  # 16-23
)  # fmt: skip
WEEKEND = 0.2
# auto must cost at most this share of the peak-sized pool's idle prebuild-hours.
IDLE_SHARE = 0.5


def rate(at: datetime) -> float:
    return WEEKEND if at.weekday() >= 5 else WEEKDAY[at.hour]


def arrivals(start: datetime, end: datetime, seed: int) -> list[datetime]:
    """A Poisson process of rate `rate(t)`, piecewise constant per hour (thinning-free: one
    exponential clock per hour)."""
    rng = random.Random(seed)
    found: list[datetime] = []
    hour = start
    while hour < end:
        per_hour = rate(hour)
        at = 0.0
        while per_hour > 0:
            at += rng.expovariate(per_hour)
            if at >= 1.0:
                break
            found.append(hour + at * HOUR)
        hour += HOUR
    return found


@dataclass(frozen=True)
class Pool:
    label: str
    desired: int
    # (mode, min, max) of the autoscale policy; None: no policy (off).
    policy: tuple[str, int, int] | None = None


@dataclass
class Result:
    pool: Pool
    people: int = 0
    hits: int = 0
    misses: int = 0
    idle_hours: float = 0.0
    created: int = 0
    reconciles: int = 0
    db_hits: int = -1
    db_misses: int = -1
    suggested: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.people if self.people else 0.0

    @property
    def wait_hours(self) -> float:
        return (self.hits * SHORT + self.misses * BUILD) / HOUR

    @property
    def ran(self) -> bool:
        """People came, claims happened, prebuilds were created, the database agrees."""
        return (
            self.people > 0
            and self.hits > 0
            and self.created > 0
            and (self.db_hits, self.db_misses) == (self.hits, self.misses)
        )


class Simulation:
    """One pool over the whole simulated span, on a database of its own."""

    def __init__(self, url: str, pool: Pool, people: Sequence[datetime], measure_from: datetime,
                 end: datetime) -> None:  # fmt: skip
        self.url = url
        self.pool = pool
        self.people = people
        self.measure_from = measure_from
        self.end = end
        self.now = START
        self.result = Result(pool)
        self.reconciler = Reconciler(PlanConfig())
        self.timer: datetime | None = None
        self.names = 0

    async def run(self, conn: psycopg.AsyncConnection[Any], preset: UUID, template: UUID) -> None:
        started = time.monotonic()
        queue = [(at, n) for n, at in enumerate(self.people)]
        heapq.heapify(queue)
        pool_size = 0
        await self._reconcile(conn, template)
        while True:
            due = await self._next_due(conn)
            candidates = [t for t in (queue[0][0] if queue else None, due, self.timer) if t]
            nxt = min(candidates, default=None)
            if nxt is None or nxt >= self.end:
                self._idle(pool_size, self.now, self.end)
                break
            self._idle(pool_size, self.now, nxt)
            self.now = nxt
            await conn.execute(bench_query("demand_complete_due"), self._durations(nxt))
            while queue and queue[0][0] <= nxt:
                at, n = heapq.heappop(queue)
                await self._arrive(conn, preset, n, at)
            await self._reconcile(conn, template)
            pool_size = await self._scalar(conn, "demand_pool", {})
        window = {"since": self.measure_from, "until": self.end}
        self.result.created = await self._scalar(conn, "demand_created", window)
        seen = await store.read_recent_demand(conn, [template], since=self.measure_from,
                                              until=self.end)  # fmt: skip
        found = seen.get(preset)
        self.result.db_hits = found.hits if found else 0
        self.result.db_misses = found.misses if found else 0
        self.result.seconds = time.monotonic() - started

    async def _arrive(
        self, conn: psycopg.AsyncConnection[Any], preset: UUID, n: int, at: datetime
    ) -> None:
        user = _user(n % USERS + 1)
        self.names += 1
        name = f"w{self.names}"
        async with conn.transaction():
            claimed = await claim_async(conn, preset_id=preset, user_id=user, name=name, now=at)
            if claimed is None:
                await conn.execute(
                    bench_query("demand_miss"), {"now": at, "user_id": user, "name": name}
                )
        if at >= self.measure_from:
            self.result.people += 1
            if claimed is None:
                self.result.misses += 1
            else:
                self.result.hits += 1

    async def _reconcile(self, conn: psycopg.AsyncConnection[Any], template: UUID) -> None:
        await conn.execute(bench_query("demand_sim_now"), {"now": self.now})
        outcome = await self.reconciler.reconcile(conn, [template], Cause(Trigger.EVENT))
        if outcome.now != self.now:
            raise RuntimeError(f"the reconcile planned at {outcome.now}, not at {self.now}")
        self.result.reconciles += 1
        timer = outcome.next_attention.get(template)
        # A plan that wants another look at once (creates left over by the per-cycle cap)
        # gets it a second later: simulated time must move.
        self.timer = None if timer is None else max(timer, self.now + timedelta(seconds=1))
        if self.now >= self.measure_from:
            for plan in outcome.plans:
                if plan.state.suggested is not None:
                    self.result.suggested.append(plan.state.suggested)

    async def _next_due(self, conn: psycopg.AsyncConnection[Any]) -> datetime | None:
        cur = await conn.execute(bench_query("demand_next_due"), self._durations(self.now))
        row = await cur.fetchone()
        return None if row is None else row[0]

    def _idle(self, pool_size: int, since: datetime, until: datetime) -> None:
        start = max(since, self.measure_from)
        if until > start:
            self.result.idle_hours += pool_size * ((until - start) / HOUR)

    @staticmethod
    def _durations(now: datetime) -> dict[str, Any]:
        return {"now": now, "build": BUILD, "short": SHORT}

    @staticmethod
    async def _scalar(
        conn: psycopg.AsyncConnection[Any], name: str, params: dict[str, Any]
    ) -> int:
        cur = await conn.execute(bench_query(name), params)
        row = await cur.fetchone()
        return int(row[0]) if row else 0


def _seeded_id(label: str) -> UUID:
    """The id bench/sql/demand.sql gives a row: md5('demand-<label>')::uuid."""
    return UUID(hashlib.md5(f"demand-{label}".encode()).hexdigest())


def _user(n: int) -> UUID:
    return _seeded_id(f"user-{n}")


def prepare(url: str, pool: Pool) -> None:
    """A migrated database `url` gets the template, its preset and people (and the policy)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(bench_query("demand_sim_clock"))
        conn.execute(bench_query("demand_seed"),
                     {"at": START - DAY, "users": USERS, "desired": pool.desired})  # fmt: skip
        if pool.policy is not None:
            mode, lo, hi = pool.policy
            conn.execute(bench_query("demand_policy"),
                         {"mode": mode, "min_instances": lo, "max_instances": hi})  # fmt: skip


async def run_pool(
    url: str, pool: Pool, people: Sequence[datetime], measure_from: datetime, end: datetime
) -> Result:
    """Simulate `pool` on the prepared database `url`."""
    sim = Simulation(url, pool, people, measure_from, end)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(bench_query("demand_sim_session"))
        await sim.run(conn, _seeded_id("preset"), _seeded_id("template"))
    return sim.result


async def simulate(
    server: BenchServer, pool: Pool, people: Sequence[datetime], measure_from: datetime,
    end: datetime, log: Callable[[str], None],
) -> Result:  # fmt: skip
    dbname = "prebuildd_bench_demand"
    server.drop(dbname)
    server.create(dbname)
    url = server.url(dbname)
    try:
        migrate(url)
        prepare(url, pool)
        result = await run_pool(url, pool, people, measure_from, end)
        log(f"  {pool.label}: {result.reconciles} reconciles in {result.seconds:.0f} s")
        return result
    finally:
        server.drop(dbname)


def report(results: Sequence[Result], weeks: int, errors: ServiceErrors) -> bool:
    rows = [("pool", "people", "hits", "misses", "hit rate", "idle prebuild-h", "people's wait h",
             "created", "suggested (min-max)", "db hits/misses")]  # fmt: skip
    for r in results:
        suggested = f"{min(r.suggested)}-{max(r.suggested)}" if r.suggested else "-"
        rows.append((
            r.pool.label, str(r.people), str(r.hits), str(r.misses), f"{r.hit_rate:.1%}",
            f"{r.idle_hours:.1f}", f"{r.wait_hours:.1f}", str(r.created), suggested,
            f"{r.db_hits}/{r.db_misses}",
        ))  # fmt: skip
    print(table(rows))
    print()
    _small, two, peak, auto = results
    ran = all(r.ran for r in results)
    for r in results:
        if not r.ran:
            print(f"MISSED: {r.pool.label} measured nothing trustworthy (people {r.people}, "
                  f"hits {r.hits}, created {r.created}, database {r.db_hits}/{r.db_misses} vs "
                  f"simulated {r.hits}/{r.misses})")  # fmt: skip
    serves = auto.idle_hours <= two.idle_hours and auto.hit_rate > two.hit_rate
    saves = peak.idle_hours > 0 and auto.idle_hours <= IDLE_SHARE * peak.idle_hours
    idle_ratio = auto.idle_hours / peak.idle_hours if peak.idle_hours else float("inf")
    print(f"* simulation ran (people, claims, creates; database counts = simulated): "
          f"{verdict(ran)}")  # fmt: skip
    print(f"* at no more cost than off/{two.pool.desired} (idle {auto.idle_hours:.1f} <= "
          f"{two.idle_hours:.1f} prebuild-h), auto serves more people ({auto.hit_rate:.1%} > "
          f"{two.hit_rate:.1%}): {verdict(serves)}")  # fmt: skip
    print(f"* auto idle prebuild-hours {auto.idle_hours:.1f} <= {IDLE_SHARE:.0%} of "
          f"off/{peak.pool.desired}'s {peak.idle_hours:.1f} (ratio {idle_ratio:.2f}; hit rate "
          f"{auto.hit_rate:.1%} vs {peak.hit_rate:.1%}): {verdict(saves)}")  # fmt: skip
    print(f"* {errors.summary('the reconciler')}")
    ok = errors.verdict(ran and serves and saves)
    print(f"* overall ({weeks} simulated weeks, the last one measured): {verdict(ok)}")
    return ok


# ---------------------------------------------------------------------------------------------
# --part reads
# ---------------------------------------------------------------------------------------------

READ_ROUNDS = 15
BUSY_WORKSPACES = 1_000
TARGET_MS = 10.0
TARGET_RATIO = 1.5


@dataclass
class Timings:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


async def _timed(meter: CpuMeter, into: Timings, work: Callable[[], Awaitable[None]]) -> None:
    cpu0, wall0 = meter.read(), time.perf_counter()
    await work()
    into.wall.append(time.perf_counter() - wall0)
    into.cpu.append(meter.read() - cpu0)


async def reads(args: argparse.Namespace) -> int:
    print_header("demand-aware pools: what demand costs the reads of a big fleet")
    spec = SCALES["spec"]
    busy = template_id(1)
    busy_preset = preset_id(1, spec.versions, 1)
    errors = ServiceErrors()
    with bench_server() as server, errors.watching():
        print_server(server)
        fleet = ensure_fleet(server, "spec", spec, reuse=args.reuse)
        url = server.clone(fleet, "bench_demand_reads")
        try:
            migrate(url)
            now = datetime.now(UTC)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(bench_query("demand_reads_presets_everywhere"))
                conn.execute(
                    bench_query("demand_reads_busy_template"),
                    {"template_id": busy, "preset_id": busy_preset, "now": now,
                     "workspaces": BUSY_WORKSPACES},
                )  # fmt: skip
                conn.execute(bench_query("demand_reads_analyze"))
                row = conn.execute(
                    bench_query("demand_reads_counts"), {"template_id": busy, "now": now}
                ).fetchone()
            in_window = int(row[0]) if row else 0
            print(f"fleet {spec.describe()}; busy template: {in_window:,} builds naming its "
                  f"presets in the last 14 days")  # fmt: skip
            return await _measure_reads(url, busy, busy_preset, in_window, errors)
        finally:
            server.drop("bench_demand_reads")


async def _measure_reads(
    url: str, busy: UUID, busy_preset: UUID, in_window: int, errors: ServiceErrors
) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        meter = CpuMeter(conn.info.backend_pid)
        found: dict[str, Timings] = {
            k: Timings() for k in ("prebuild_metrics", "demand_totals", "off", "warm", "cold")
        }
        warm = Reconciler(PlanConfig(), dry_run=True)

        async def policy(mode: str) -> None:
            await conn.execute(
                bench_query("demand_reads_policy"), {"mode": mode, "preset_id": busy_preset}
            )

        async def metrics() -> None:
            await (await conn.execute(query("prebuild_metrics"))).fetchall()

        async def demand() -> None:
            await (await conn.execute(query("demand_totals"))).fetchall()

        async def cached() -> None:
            await warm.reconcile(conn, [busy], Cause(Trigger.EVENT))

        async def cold() -> None:
            await Reconciler(PlanConfig(), dry_run=True).reconcile(
                conn, [busy], Cause(Trigger.EVENT)
            )

        await policy("auto")
        await cached()  # fills the warm cache (and the connection's caches)
        totals = await store.read_demand_totals(conn)
        for n in range(READ_ROUNDS):
            if n % 2 == 0:
                await _timed(meter, found["prebuild_metrics"], metrics)
                await _timed(meter, found["demand_totals"], demand)
            else:
                await _timed(meter, found["demand_totals"], demand)
                await _timed(meter, found["prebuild_metrics"], metrics)
            await policy("off")
            await _timed(meter, found["off"], cached)
            await policy("auto")
            await _timed(meter, found["warm"], cached)
            await _timed(meter, found["cold"], cold)
    whose = "this process + its backend" if meter.includes_server else "this process only"
    rows = [("read", "wall median", "wall p90", f"CPU median ({whose})")]
    labels = {
        "prebuild_metrics": "metrics: prebuild_metrics (global, existing)",
        "demand_totals": f"metrics: demand_totals (global, new; {len(totals):,} presets)",
        "off": "reconcile busy template, no policy",
        "warm": "reconcile busy template, auto, history cached",
        "cold": f"reconcile busy template, auto, history read ({in_window:,} builds)",
    }
    for key, label in labels.items():
        wall, cpu = Stats.of(found[key].wall), Stats.of(found[key].cpu)
        rows.append((label, f"{wall.median:.2f} ms", f"{wall.p90:.2f} ms", f"{cpu.median:.2f} ms"))
    print(table(rows))
    off = Stats.of(found["off"].cpu).median
    warm_cpu = Stats.of(found["warm"].cpu).median
    warm_wall = Stats.of(found["warm"].wall).median
    ratio = warm_cpu / off if off else float("inf")
    metrics_ratio = Stats.of(found["demand_totals"].cpu).median / max(
        Stats.of(found["prebuild_metrics"].cpu).median, 1e-9
    )
    ok = errors.verdict(warm_wall <= TARGET_MS and ratio <= TARGET_RATIO and in_window > 0)
    print()
    print(f"* {errors.summary('the reconciler')}")
    print(f"* demand_totals / prebuild_metrics CPU: {metrics_ratio:.2f} (reported)")
    print(f"* cached reconcile {warm_wall:.2f} ms <= {TARGET_MS:.0f} ms and CPU ratio to no "
          f"policy {ratio:.2f} <= {TARGET_RATIO}: {verdict(ok)}")  # fmt: skip
    return 0 if ok else 1


async def main_async(args: argparse.Namespace) -> int:
    if args.part == "reads":
        return await reads(args)
    print_header("demand-aware pools: a weekday curve, off vs auto")
    weeks = 2 if args.quick else args.weeks
    if weeks < 2:
        print("MISSED: at least two simulated weeks are needed (one of history, one measured)")
        return 2
    end = START + weeks * WEEK
    measure_from = end - WEEK
    people = arrivals(START, end, args.seed)
    print(f"simulated: {START:%Y-%m-%d} + {weeks} weeks, {len(people)} people (seed "
          f"{args.seed}); create {BUILD}, claim build and delete {SHORT}; measured: the last "
          f"week")  # fmt: skip
    pools = (
        Pool("off, desired 1", 1),
        Pool("off, desired 2", 2),
        Pool(f"off, desired {PEAK}", PEAK),
        Pool(f"auto (desired 1, max {MAX})", 1, ("auto", 0, MAX)),
    )
    errors = ServiceErrors()
    with bench_server() as server, errors.watching():
        print_server(server)
        results = [
            await simulate(server, pool, people, measure_from, end, print) for pool in pools
        ]
    print()
    return 0 if report(results, weeks, errors) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="two simulated weeks, not three")
    parser.add_argument("--weeks", type=int, default=3, help="simulated weeks (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the arrivals")
    parser.add_argument("--part", choices=("sim", "reads"), default="sim")
    parser.add_argument(
        "--reuse", action="store_true", help="reads: reuse a seeded `spec` fleet"
    )
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
