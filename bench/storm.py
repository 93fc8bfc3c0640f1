"""A storm of job status changes: does the service coalesce it, and stay within its means?

The real service runs in this process (`Service(...).run()` in an anyio task group, against a
clone of the issue's fleet, 1,000 templates / 5,000 presets / 50,000 workspaces). Once its
startup sweep has settled, a separate process changes the status of 20,000 prebuild jobs of
200 templates within about 2 s: 200 transactions of 100 jobs each, one every 10 ms, each
drawing its jobs from all 200 templates (a provisioner fleet finishing jobs all over the
place, the worst case for coalescing). The jobs are finished builds of deleted or claimed
prebuilds (bench/sql/storm.sql says why): every change is a real status transition that
prebuildd's trigger reports, and no reconcile has anything to write, so what is measured is
the event path itself.

Reported, all from this one run:

* reconciles per storm template, from the service's own outcomes
  (`Service.dispatcher.on_outcome`), counted from the storm's first commit until the service
  converged (target <= 3, and at least 1: every storm template must have been reconciled),
  next to the notifications each template caused;
* the notifications the service received (its own `prebuildd_events_received_total`) and the
  queue adds they became: the verdict requires that every notification the bench's own
  listener saw reached the service, and the service's queue;
* the deepest the work queue got (an instrumented `WorkQueue` handed to `Service(queue=...)`,
  exact, not sampled);
* the service's database connections (pool and listener, sampled from pg_stat_activity every
  ~5 ms by the load process) against the pool's size;
* time to converge: from the storm's last commit until the last reconcile it caused ended,
  after which the queue stayed empty and no reconcile ran for 500 ms.

The storm runs once per per-template cooldown asked for (`--cooldown 0,250ms,500ms,1s`, the
service's `Settings.cooldown`, `prebuildd run --cooldown`), each against a fresh service on
the same clone; the verdict is the service's default cooldown's.

    PYTHONPATH=service python -m bench.storm [--quick] [--reuse] [--cooldown 0,250ms,500ms,1s]
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import queue
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from multiprocessing.synchronize import Event as MpEvent
from typing import Any
from uuid import UUID

import anyio
import psycopg

from bench._common import ServiceErrors, common_args, load, print_header, table, verdict
from bench._server import BenchServer, bench_server, print_server
from bench._sql import bench_query
from bench.fleet import SCALES, FleetSpec, ensure_fleet, template_id
from bench.reaction import LATENCY_HEADER, Latency
from prebuildd.config import Settings, format_duration, parse_duration
from prebuildd.queue import Work, WorkQueue
from prebuildd.reconciler import Outcome
from prebuildd.service import Service
from prebuildd.trigger import Trigger

TARGET_RECONCILES_PER_TEMPLATE = 3
# The storm ended when the queue stayed empty and no reconcile ran for this long.
QUIET_SECONDS = 0.5
SAMPLE_EVERY = 0.005


@dataclass(frozen=True, slots=True)
class StormShape:
    templates: int
    changes: int
    batch: int
    seconds: float

    @property
    def batches(self) -> int:
        return self.changes // self.batch


FULL = StormShape(templates=200, changes=20_000, batch=100, seconds=2.0)
QUICK = StormShape(templates=50, changes=5_000, batch=100, seconds=1.0)


# ---------------------------------------------------------------------------------------------
# Instrumentation of the service (this process)
# ---------------------------------------------------------------------------------------------


class DepthQueue(WorkQueue[UUID]):
    """The service's queue (same settle window and cooldown), remembering the most keys it
    ever held queued / processing. Its signatures are the queue's own, checked by mypy: an
    override that drifted (one that lacked `urgent`) made every event fail in the listener's
    callback while the bench still printed MET."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(
            settle=settings.settle.total_seconds(), cooldown=settings.cooldown.total_seconds()
        )
        self.max_depth = 0
        self.max_processing = 0

    def add(
        self,
        key: UUID,
        *,
        trigger: Trigger = Trigger.EVENT,
        delay: float | None = None,
        event_at: float | None = None,
        urgent: bool = False,
    ) -> None:
        super().add(key, trigger=trigger, delay=delay, event_at=event_at, urgent=urgent)
        self.max_depth = max(self.max_depth, self.depth())

    def get_nowait(self, max_batch: int = 1) -> Work[UUID] | None:
        work = super().get_nowait(max_batch)
        self.max_processing = max(self.max_processing, self.processing())
        return work

    def idle(self) -> bool:
        """Nothing being reconciled and no sweep pending. Keys may still be queued: timers
        for later (schedule boundaries...); anything ready would already be processing."""
        return not (self.processing() or self.sweep_queued() or self.sweep_running())

    def reset_peaks(self) -> None:
        self.max_depth = self.depth()
        self.max_processing = self.processing()


@dataclass(frozen=True, slots=True)
class Seen:
    """One reconcile, as the service reported it."""

    ended: float  # time.monotonic()
    templates: tuple[UUID, ...]
    trigger: str
    actions: int
    duration: float


def watch(service: Service, seen: list[Seen]) -> None:
    def on_outcome(outcome: Outcome) -> None:
        actions = sum(outcome.actions_by_kind().values())
        trigger = str(outcome.cause.trigger)
        seen.append(Seen(time.monotonic(), outcome.locked, trigger, actions, outcome.duration))

    service.dispatcher.on_outcome.append(on_outcome)


def events_received(service: Service) -> int:
    """The service's own count of job_status notifications (its /metrics counter)."""
    value = service.metrics.registry.get_sample_value(
        "prebuildd_events_received_total", {"kind": "job_status"}
    )
    return int(value or 0)


async def wait_settled(q: DepthQueue, seen: list[Seen], templates: int, quiet: float) -> float:
    """Until the startup sweep covered `templates` and nothing ran for `quiet` seconds."""
    started = time.monotonic()
    with anyio.fail_after(180):
        while True:
            swept = sum(len(s.templates) for s in seen if s.trigger == "startup")
            last = seen[-1].ended if seen else time.monotonic()
            if swept >= templates and q.idle() and time.monotonic() - last >= quiet:
                return last - started
            await anyio.sleep(0.05)


async def wait_converged(q: DepthQueue, seen: list[Seen], storm_end: float) -> float:
    """Seconds from the storm's last commit to the end of the last reconcile it caused."""
    with anyio.fail_after(120):
        while True:
            now = time.monotonic()
            last = max([s.ended for s in seen if s.ended >= storm_end] or [storm_end])
            if q.idle() and now - last >= QUIET_SECONDS and now - storm_end >= QUIET_SECONDS:
                return last - storm_end
            await anyio.sleep(0.01)


# ---------------------------------------------------------------------------------------------
# The load process: writes the storm, samples connections, counts notifications
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadPlan:
    url: str
    batches: list[list[UUID]]
    start_at: float  # time.monotonic() (system-wide on Linux: same clock in both processes)
    seconds: float


@dataclass
class Observed:
    # (commit returned, rows changed) per batch
    commits: list[tuple[float, int]] = field(default_factory=list)
    # (time, pool connections, pool connections not idle, listener connections)
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)
    # (arrival, template) of every job_status notification
    notifications: list[tuple[float, UUID]] = field(default_factory=list)


def load_process(plan: LoadPlan, stop: MpEvent, results: multiprocessing.Queue[Any]) -> None:
    """Entry point of the load process (spawned: imports nothing of the parent's state)."""
    observed = Observed()
    helpers = [
        threading.Thread(target=_sample, args=(plan.url, stop, observed.samples)),
        threading.Thread(target=_listen, args=(plan.url, stop, observed.notifications)),
    ]
    for thread in helpers:
        thread.start()
    observed.commits = _write(plan)
    results.put(("written", observed.commits))
    stop.wait()
    for thread in helpers:
        thread.join()
    results.put(("observed", observed))


def _write(plan: LoadPlan) -> list[tuple[float, int]]:
    commits: list[tuple[float, int]] = []
    step = plan.seconds / max(len(plan.batches), 1)
    with psycopg.connect(plan.url) as conn:
        for k, batch in enumerate(plan.batches):
            delay = plan.start_at + k * step - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            cur = conn.execute(bench_query("storm_flip_jobs"), {"job_ids": batch})
            conn.commit()
            commits.append((time.monotonic(), cur.rowcount))
    return commits


def _sample(url: str, stop: MpEvent, out: list[tuple[float, int, int, int]]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            row = conn.execute(bench_query("storm_service_connections")).fetchone()
            if row is not None:
                out.append((time.monotonic(), int(row[0]), int(row[1]), int(row[2])))
            time.sleep(SAMPLE_EVERY)


def _listen(url: str, stop: MpEvent, out: list[tuple[float, UUID]]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(bench_query("storm_listen"))
        while not stop.is_set():
            for notify in conn.notifies(timeout=0.2):
                event = json.loads(notify.payload)
                if event.get("k") == "job_status":
                    out.append((time.monotonic(), UUID(event["t"])))


# ---------------------------------------------------------------------------------------------
# Setting up and running the storm
# ---------------------------------------------------------------------------------------------


def storm_templates(spec: FleetSpec, count: int) -> list[UUID]:
    count = min(count, spec.templates)
    return [template_id(1 + (k * spec.templates) // count) for k in range(count)]


def plan_batches(job_ids: Sequence[UUID], shape: StormShape, seed: int) -> list[list[UUID]]:
    """`shape.batches` batches of distinct jobs: passes over every job, each reshuffled."""
    rng = random.Random(seed)
    batches: list[list[UUID]] = []
    while len(batches) < shape.batches:
        order = list(job_ids)
        rng.shuffle(order)
        for start in range(0, len(order) - shape.batch + 1, shape.batch):
            batches.append(order[start : start + shape.batch])
    return batches[: shape.batches]


def find_jobs(url: str, templates: Sequence[UUID]) -> list[UUID]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(bench_query("storm_jobs"), {"template_ids": list(templates)})
        return [r[0] for r in rows.fetchall()]


@dataclass
class StormRun:
    settings: Settings
    startup: float
    seen: list[Seen]
    observed: Observed
    storm_start: float
    storm_end: float
    converge: float
    timers: int  # keys queued for later when the storm began (not counted as storm depth)
    max_depth: int
    max_processing: int
    queue_stats: tuple[int, int, int, int]  # adds, new keys, coalesced, follow-ups
    received: int  # job_status notifications the service counted during the storm


async def run_storm(
    url: str, spec: FleetSpec, batches: list[list[UUID]], seconds: float, settings: Settings
) -> StormRun:
    depth_queue = DepthQueue(settings)
    service = Service(settings, url, queue=depth_queue)
    seen: list[Seen] = []
    watch(service, seen)
    async with anyio.create_task_group() as tg:
        await tg.start(functools.partial(service.run, handle_signals=False))
        startup = await wait_settled(depth_queue, seen, spec.templates, quiet=1.5)
        depth_queue.reset_peaks()
        timers = depth_queue.depth()
        before, received_before = depth_queue.stats(), events_received(service)
        observed, storm_end, converge = await _storm(url, batches, seconds, depth_queue, seen)
        after, received = depth_queue.stats(), events_received(service) - received_before
        tg.cancel_scope.cancel()
    stats = (
        after.adds - before.adds,
        after.queued - before.queued,
        after.coalesced - before.coalesced,
        after.follow_ups - before.follow_ups,
    )
    storm_start = observed.commits[0][0] if observed.commits else storm_end
    return StormRun(
        settings, startup, seen, observed, storm_start, storm_end, converge, timers,
        depth_queue.max_depth, depth_queue.max_processing, stats, received,
    )  # fmt: skip


async def _storm(
    url: str, batches: list[list[UUID]], seconds: float, q: DepthQueue, seen: list[Seen]
) -> tuple[Observed, float, float]:
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    results: multiprocessing.Queue[Any] = ctx.Queue()
    plan = LoadPlan(url, batches, time.monotonic() + 2.0, seconds)
    proc = ctx.Process(target=load_process, args=(plan, stop, results), daemon=True)
    proc.start()
    try:
        _, commits = await anyio.to_thread.run_sync(functools.partial(results.get, timeout=120))
        storm_end = commits[-1][0]
        converge = await wait_converged(q, seen, storm_end)
        stop.set()
        _, observed = await anyio.to_thread.run_sync(functools.partial(results.get, timeout=30))
    except queue.Empty:
        raise RuntimeError("the load process did not report back") from None
    finally:
        stop.set()
        await anyio.to_thread.run_sync(functools.partial(proc.join, timeout=10))
    assert isinstance(observed, Observed)
    return observed, storm_end, converge


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def label(run: StormRun) -> str:
    cooldown = run.settings.cooldown
    default = " (default)" if cooldown == Settings().cooldown else ""
    return f"[cooldown {format_duration(cooldown) if cooldown else '0'}{default}]"


def report(run: StormRun, templates: Sequence[UUID], shape: StormShape) -> bool:
    o, tag = run.observed, label(run)
    rows_changed = sum(n for _, n in o.commits)
    print(
        f"{tag} storm: {rows_changed:,} job status changes on {len(templates)} templates in "
        f"{len(o.commits)} transactions, {run.storm_end - run.storm_start:.2f} s from first to "
        f"last commit (planned {shape.seconds:.1f} s); startup had settled after "
        f"{run.startup:.2f} s"
    )
    window = [s for s in run.seen if s.ended >= run.storm_start]
    wanted = set(templates)
    per_template = Counter(t for s in window for t in s.templates if t in wanted)
    notified = Counter(t for at, t in o.notifications if at >= run.storm_start - 0.5)
    counts = sorted(per_template.get(t, 0) for t in templates)
    events = sorted(notified.get(t, 0) for t in templates)
    adds, new_keys, coalesced, follow_ups = run.queue_stats
    print(
        f"{tag} notifications (job_status) received by a second listener: {sum(events):,} "
        f"(per template median {statistics.median(events):.0f}, max {events[-1]}); "
        f"by the service: {run.received:,}; queue adds {adds:,}: {new_keys:,} queued, "
        f"{coalesced:,} coalesced, {follow_ups:,} follow-ups"
    )
    # The storm must have happened to the service: every notification the second listener
    # saw reached it and its queue, and every storm template was reconciled.
    delivered = run.received >= sum(events) > 0 and adds >= run.received
    covered = counts[0] >= 1
    met = delivered and covered and counts[-1] <= TARGET_RECONCILES_PER_TEMPLATE
    print(table([
        [f"{tag} reconciles per storm template", "median", "mean", "max", "over target"],
        ["", f"{statistics.median(counts):.0f}", f"{statistics.fmean(counts):.2f}",
         str(counts[-1]), str(sum(1 for c in counts if c > TARGET_RECONCILES_PER_TEMPLATE))],
    ]))  # fmt: skip
    _print_reconciles(tag, window)
    pool = _print_connections(tag, run)
    print(
        f"{tag} queue: deepest {run.max_depth} keys queued (of which {run.timers} timers for "
        f"later, queued before the storm), at most {run.max_processing} processing; converged "
        f"{run.converge * 1000:.0f} ms after the last commit (then quiet for "
        f"{QUIET_SECONDS * 1000:.0f} ms)"
    )
    print(
        f"{tag} events delivered to the service and its queue: {verdict(delivered)}; every "
        f"storm template reconciled: {verdict(covered)} (min {counts[0]})"
    )
    print(
        f"{tag} target 1 <= reconciles per template <= {TARGET_RECONCILES_PER_TEMPLATE}: "
        f"{verdict(met)} (max {counts[-1]}); connections within the pool: {verdict(pool)}"
    )
    return met and pool


def _print_reconciles(tag: str, window: Sequence[Seen]) -> None:
    if not window:
        print(f"{tag} no reconcile ran during the storm")
        return
    sizes = [len(s.templates) for s in window]
    kinds = ", ".join(f"{k} {n}" for k, n in Counter(s.trigger for s in window).items())
    print(
        f"{tag} reconcile transactions: {len(window)} ({kinds}), templates per transaction "
        f"median {statistics.median(sizes):.0f}, max {max(sizes)}; template reconciles "
        f"{sum(sizes):,}; actions written {sum(s.actions for s in window)}"
    )
    durations = Latency.of([s.duration for s in window]).cells()
    print(table([LATENCY_HEADER, [f"{tag} reconcile transaction duration", *durations]]))


def _print_connections(tag: str, run: StormRun) -> bool:
    samples = [s for s in run.observed.samples if s[0] >= run.storm_start - 0.1]
    if not samples:
        print(f"{tag} no pg_stat_activity samples")
        return False
    pool_size = run.settings.pool_max_size
    peak_pool = max(s[1] for s in samples)
    peak_busy = max(s[2] for s in samples)
    peak_listener = max(s[3] for s in samples)
    print(
        f"{tag} service connections ({len(samples)} samples): peak {peak_pool} pool "
        f"connections ({peak_busy} not idle) + {peak_listener} listener; pool max_size "
        f"{pool_size}, {run.settings.concurrency} reconcile workers"
    )
    return peak_pool <= pool_size and peak_listener <= 1


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def run(server: BenchServer, args: argparse.Namespace) -> bool:
    """True when the default cooldown's storm met its target (False if it was not run)."""
    name = "quick" if args.quick else "reaction"
    spec = SCALES[name]
    shape = QUICK if args.quick else FULL
    cooldowns = [parse_duration(c) for c in args.cooldown.split(",") if c.strip()]
    base = Settings(sweep_interval=timedelta(hours=1), metrics_addr="")
    dbname = ensure_fleet(server, name, spec, reuse=args.reuse)
    started = time.monotonic()
    url = server.clone(dbname, f"{dbname}_st")
    print(f"cloned {dbname} in {time.monotonic() - started:.1f} s")
    try:
        templates = storm_templates(spec, shape.templates)
        jobs = find_jobs(url, templates)
        batches = plan_batches(jobs, shape, seed=11)
        print(
            f"{len(jobs):,} finished prebuild jobs on {len(templates)} templates; "
            f"{len(batches)} batches of {shape.batch}, one every "
            f"{shape.seconds / len(batches) * 1000:.0f} ms; one service per cooldown"
        )
        verdicts: dict[timedelta, bool] = {}
        # An error line from the service (bench/_common.ServiceErrors) makes the run MISSED.
        errors = ServiceErrors()
        for cooldown in cooldowns or [base.cooldown]:
            settings = replace(base, cooldown=cooldown)
            with errors.watching():
                result = anyio.run(run_storm, url, spec, batches, shape.seconds, settings)
            verdicts[cooldown] = report(result, templates, shape)
        print(errors.summary())
        met = errors.verdict(verdicts.get(base.cooldown, False))
        if base.cooldown in verdicts:
            print(f"verdict (default cooldown): {verdict(met)}")
        else:
            print("verdict: none, the default cooldown was not among those run")
    finally:
        server.drop(f"{dbname}_st")
    print(f"after the runs: {load()}")
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    common_args(parser)
    parser.add_argument(
        "--cooldown",
        default="0,250ms,500ms,1s",
        help="per-template cooldowns (Settings.cooldown) to run the storm with, one fresh "
        "service each, comma-separated (default 0,250ms,500ms,1s; the service's default "
        "decides the verdict)",
    )
    args = parser.parse_args()
    print_header("bench.storm")
    with bench_server() as server:
        print_server(server)
        met = run(server, args)
    # A storm that measured nothing (no event delivered, no reconcile) is a failure too.
    raise SystemExit(0 if met else 1)


if __name__ == "__main__":
    main()
