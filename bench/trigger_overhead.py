"""What do prebuildd's NOTIFY triggers cost Coder's hot paths? (issue 11 item 3, issue 14 item 4)

File-level clones of one seeded fleet, side by side in the same run: A with prebuildd's
current triggers (sql/functions/*.sql and sql/triggers/*.sql of this tree applied to it), B
after `prebuildd.migrate.uninstall` (no triggers; the prebuildd_* indexes it also drops are
not on the tables written here), and with `--compare FILE` a side C: A's triggers with the
function(s) of FILE instead, an alternative being weighed. The same writes run against every
side, each one statement in its own transaction, as Coder's provisioner daemons and agents
write:

* provisioner heartbeat: `updated_at` only, on prebuilds' running jobs (must send nothing);
* agent connection update: an agent's connection bookkeeping (must send nothing);
* users' job status: pending -> running -> succeeded for ordinary users' jobs (nothing);
* prebuild job status: the same for prebuilds' creates of their template's active version,
  the realistic lifecycle of a prebuild's job (nothing: a success is not announced,
  sql/functions/notify_event.sql);
* prebuild job failures: pending -> running -> failed for the same jobs (one notification
  per job; information, no target: it is the cost of one NOTIFY, and failures are rare);

Client part (the targets): each workload with 1 writer and with 16 concurrent writers
(prebuild job status and failures also with 64): NOTIFY serialises committing transactions
on a cluster-wide lock, so concurrency is where it costs. The sides alternate in slices (the order
rotating every slice) so that every side of a slice sees the same machine; a side's ratio is
the median over slices of (B time / its time), i.e. its throughput relative to B's. The CPU
each side spent (this process's threads, the writing backends and the listening backend) is
printed beside it.

Server part: the same writes made by a procedure on the server (bench/sql/triggers.sql), one
transaction per write, measured as the writing backend's CPU per write (and the listener's):
what the triggers cost Coder's database server, without the client's share and mostly
without the machine's noise.

Positive controls, so that a verdict cannot be vacuous: every side with triggers must carry
them (enabled, without WHEN or UPDATE OF) and B none; every write must have updated its row;
a LISTEN session on each side with triggers must receive at least one notification per
announced status change (counted exactly, with a sentinel after each slice), and none for the
silent workloads; and after every slice, untimed, a control job on each side with triggers
is failed once and must send exactly one notification (so a silent workload's zero comes
from triggers that run and a listener that counts). Any failed control prints MISSED, and
any MISSED of side A makes the exit status 1 (C is for comparison only).

Targets: heartbeats, agent connection updates, users' job status >= 95 % of trigger-free;
prebuild job status >= 90 % with 1 writer, >= 80 % with 16 and with 64. The failure workload
has none (its rows say "info"): its verdict is the controls'.

    PYTHONPATH=service python -m bench.trigger_overhead [--quick] [--reuse]
        [--synchronous-commit on|off] [--rows N] [--rounds N] [--case TEXT]
        [--compare FUNCTION.sql] [--part client|server|all]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench._common import CpuMeter, common_args, print_header, table, verdict
from bench._server import BenchServer, bench_server, print_server
from bench._sql import bench_query
from bench.fleet import SCALES, ensure_fleet
from prebuildd.migrate import repeatable_files, uninstall

Conn = psycopg.Connection[Any]


@dataclass(frozen=True, slots=True)
class Step:
    query: str
    # Every committed write of this step must reach the listener (a prebuild's status change).
    notifies: bool


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    pick: str
    steps: tuple[Step, ...]
    # Back to pending before each round (status runs repeat the same transitions).
    reset: bool

    @property
    def silent(self) -> bool:
        return not any(step.notifies for step in self.steps)


@dataclass(frozen=True, slots=True)
class Case:
    workload: Workload
    writers: int
    # None: measured for information; only the controls decide its verdict.
    target: float | None

    @property
    def label(self) -> str:
        return f"{self.workload.name}, {self.writers} writer{'s' if self.writers > 1 else ''}"


HEARTBEAT = Workload(
    "provisioner heartbeat", "pick_prebuild_jobs", (Step("job_heartbeat", False),), reset=False
)
AGENT = Workload(
    "agent connection update",
    "pick_prebuild_agents",
    (Step("agent_connection", False),),
    reset=False,
)
USER_STATUS = Workload(
    "users' job status",
    "pick_user_jobs",
    (Step("job_acquired", False), Step("job_completed", False)),
    reset=True,
)
PREBUILD_STATUS = Workload(
    "prebuild job status",
    "pick_prebuild_active_starts",
    # pending -> running need not be announced: the planner counts both as in progress; nor a
    # success on the active version: the create already counted toward desired.
    (Step("job_acquired", False), Step("job_completed", False)),
    reset=True,
)
PREBUILD_FAILURES = Workload(
    "prebuild job failures",
    "pick_prebuild_active_starts",
    (Step("job_acquired", False), Step("job_failed", True)),
    reset=True,
)

CASES = (
    Case(HEARTBEAT, 1, 0.95),
    Case(HEARTBEAT, 16, 0.95),
    Case(AGENT, 1, 0.95),
    Case(AGENT, 16, 0.95),
    Case(USER_STATUS, 1, 0.95),
    Case(USER_STATUS, 16, 0.95),
    Case(PREBUILD_STATUS, 1, 0.90),
    Case(PREBUILD_STATUS, 16, 0.80),
    Case(PREBUILD_STATUS, 64, 0.80),
    Case(PREBUILD_FAILURES, 1, None),
    Case(PREBUILD_FAILURES, 16, None),
    Case(PREBUILD_FAILURES, 64, None),
)


# ---------------------------------------------------------------------------------------------
# One side: a database and its writers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SliceRun:
    seconds: float
    cpu: float
    # Writes that updated no row: the workload did not do what it claims.
    missed_rows: int


class Side:
    """One database, its writing connections, and a CPU meter over them."""

    def __init__(self, label: str, url: str, pool: ThreadPoolExecutor) -> None:
        self.label = label
        self.url = url
        self.pool = pool
        self.writers: list[Conn] = []
        self.extra_pids: list[int] = []
        self.meter = CpuMeter()

    def connect(self, writers: int, mode: str) -> None:
        self.close()
        self.writers = [psycopg.connect(self.url, autocommit=True) for _ in range(writers)]
        for conn in self.writers:
            conn.execute(bench_query("set_synchronous_commit"), {"mode": mode})
        pids = [conn.info.backend_pid for conn in self.writers]
        self.meter = CpuMeter(*pids, *self.extra_pids)

    def close(self) -> None:
        for conn in self.writers:
            conn.close()
        self.writers = []

    def run(self, workload: Workload, ids: Sequence[uuid.UUID]) -> SliceRun:
        """Write `ids` through every writer at once (each takes every n-th row)."""
        statements = [bench_query(step.query) for step in workload.steps]
        worker = uuid.uuid4()

        def writer(conn: Conn, share: Sequence[uuid.UUID]) -> int:
            missed = 0
            for row_id in share:
                for statement in statements:
                    cur = conn.execute(statement, {"id": row_id, "worker_id": worker})
                    missed += cur.rowcount != 1
            return missed

        n = len(self.writers)
        cpu = self.meter.read()
        started = time.perf_counter()
        if n == 1:
            missed = writer(self.writers[0], ids)
        else:
            futures = [self.pool.submit(writer, self.writers[i], ids[i::n]) for i in range(n)]
            missed = sum(future.result() for future in futures)
        elapsed = time.perf_counter() - started
        return SliceRun(elapsed, self.meter.read() - cpu, missed)


class Listener:
    """LISTEN on A; counts what each slice's commits sent, exactly (sentinel after them)."""

    def __init__(self, url: str) -> None:
        self.conn: Conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(bench_query("listen_events"))
        self.pid = self.conn.info.backend_pid

    def control(self, job_id: uuid.UUID) -> int:
        """Fail the control job once (back to pending first, in the same transaction): the
        notifications that sent, which must be exactly one."""
        with self.conn.transaction():
            self.conn.execute(bench_query("control_reset"), {"id": job_id})
            self.conn.execute(bench_query("control_fail"), {"id": job_id})
        return self.drain()

    def drain(self) -> int:
        token = f"sentinel-{uuid.uuid4()}"
        self.conn.execute(bench_query("send_sentinel"), {"token": token})
        received = 0
        for notify in self.conn.notifies(timeout=60.0):
            if notify.payload == token:
                return received
            received += 1
        raise RuntimeError(f"the sentinel never arrived ({received} notifications before)")

    def close(self) -> None:
        self.conn.close()


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


@dataclass
class Result:
    """One side with triggers against the trigger-free side B, for one case."""

    case: Case
    mode: str
    label: str
    ops: int = 0
    pair_ratios: list[float] = field(default_factory=list)
    a_seconds: float = 0.0
    b_seconds: float = 0.0
    a_cpu: float = 0.0
    b_cpu: float = 0.0
    notifications: int = 0
    # Status changes committed on this side that the triggers must announce.
    announced_writes: int = 0
    missed_rows: int = 0
    # The positive control after each slice: how many ran, and how many sent exactly one.
    controls_run: int = 0
    controls_heard: int = 0

    @property
    def ratio(self) -> float:
        """This side's throughput relative to B's: the median over paired slices."""
        return statistics.median(self.pair_ratios) if self.pair_ratios else 0.0

    @property
    def cpu_ratio(self) -> float:
        """B's CPU per write / this side's: what the triggers cost if both were CPU-bound."""
        return self.b_cpu / self.a_cpu if self.a_cpu > 0 else 0.0

    def controls(self) -> list[str]:
        """Why this result cannot be trusted; empty when every control holds."""
        failed: list[str] = []
        if self.ops == 0 or not self.pair_ratios:
            failed.append("nothing was measured")
        if self.missed_rows:
            failed.append(f"{self.missed_rows} writes updated no row")
        if self.case.workload.silent and self.notifications:
            failed.append(f"{self.notifications} notifications from writes that must send none")
        if not self.case.workload.silent and self.notifications < self.announced_writes:
            failed.append(
                f"{self.notifications} notifications for {self.announced_writes} status changes"
            )
        if self.controls_run == 0 or self.controls_heard < self.controls_run:
            failed.append(f"control job heard {self.controls_heard} of {self.controls_run} times")
        return failed

    def met(self, triggers_ok: bool) -> bool:
        target = self.case.target
        return triggers_ok and not self.controls() and (target is None or self.ratio >= target)


def slice_rows(writers: int, base: int) -> int:
    """Rows per slice: enough that every writer has a few, and thread start-up is noise."""
    return max(base, writers * 8)


def measure_case(
    case: Case,
    tested: Sequence[Side],
    b: Side,
    listeners: dict[str, Listener],
    ids: Sequence[uuid.UUID],
    *,
    control_job: uuid.UUID,
    mode: str,
    rounds: int,
    base_slice: int,
    keep_open: bool,
) -> list[Result]:
    """Every side with triggers against B, slice by slice, the order rotating."""
    results = {side.label: Result(case, mode, side.label) for side in tested}
    workload = case.workload
    sides = [*tested, b]
    size = slice_rows(case.writers, base_slice)
    slices = [ids[start : start + size] for start in range(0, len(ids), size)]
    if keep_open:
        for side in sides:
            side.connect(case.writers, mode)
    try:
        for r in range(rounds + 1):  # round 0 warms every side up
            if workload.reset:
                for side in sides:
                    with psycopg.connect(side.url, autocommit=True) as admin:
                        admin.execute(bench_query("reset_jobs_pending"), {"ids": list(ids)})
            for listener in listeners.values():
                listener.drain()  # the reset's own events
            for i, part in enumerate(slices):
                took: dict[str, SliceRun] = {}
                sent: dict[str, int] = {}
                heard: dict[str, int] = {}
                turn = (i + r) % len(sides)
                for side in sides[turn:] + sides[:turn]:
                    if not keep_open:
                        side.connect(case.writers, mode)
                    took[side.label] = side.run(workload, part)
                    if not keep_open:
                        side.close()
                    if side.label in listeners:
                        sent[side.label] = listeners[side.label].drain()
                        heard[side.label] = listeners[side.label].control(control_job)
                if r == 0:
                    continue
                run_b = took[b.label]
                for side in tested:
                    res, run_a = results[side.label], took[side.label]
                    res.ops += len(part) * len(workload.steps)
                    res.pair_ratios.append(run_b.seconds / run_a.seconds)
                    res.a_seconds += run_a.seconds
                    res.b_seconds += run_b.seconds
                    res.a_cpu += run_a.cpu
                    res.b_cpu += run_b.cpu
                    res.missed_rows += run_a.missed_rows + run_b.missed_rows
                    res.notifications += sent[side.label]
                    res.controls_run += 1
                    res.controls_heard += heard[side.label] == 1
                    announced = sum(step.notifies for step in workload.steps)
                    res.announced_writes += (len(part) - run_a.missed_rows) * announced
    finally:
        for side in sides:
            side.close()
    return [results[side.label] for side in tested]


# ---------------------------------------------------------------------------------------------
# Server cost per write, without a client
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerLoop:
    """The same writes from a procedure on the server (bench/sql/triggers.sql), one
    transaction each: what the triggers cost Coder's database server, free of the client's
    noise. Measured as the writing backend's CPU (and the listener's, on a side with
    triggers)."""

    name: str
    pick: str
    call: str
    writes_per_row: int
    reset: bool
    # Notifications each row must produce (a prebuild's completed job: 1).
    announced_per_row: int


SERVER_LOOPS = (
    ServerLoop("provisioner heartbeat", "pick_prebuild_jobs", "heartbeat_loop", 1, False, 0),
    ServerLoop(
        "agent connection update", "pick_prebuild_agents", "agent_connection_loop", 1, False, 0
    ),
    ServerLoop("users' job status", "pick_user_jobs", "job_status_loop", 2, True, 0),
    ServerLoop("prebuild job status", "pick_prebuild_active_starts", "job_status_loop", 2, True, 0),
    ServerLoop(
        "prebuild job failures", "pick_prebuild_active_starts", "job_failure_loop", 2, True, 1
    ),
)


@dataclass
class ServerResult:
    loop: ServerLoop
    mode: str
    # Per side: backend CPU per write (us) of each measured repetition.
    writer_us: dict[str, list[float]] = field(default_factory=dict)
    listener_us: dict[str, list[float]] = field(default_factory=dict)
    notifications: dict[str, int] = field(default_factory=dict)
    rows: int = 0

    def median(self, label: str) -> float:
        return statistics.median(self.writer_us[label])

    def listener(self, label: str) -> float:
        samples = self.listener_us.get(label)
        return statistics.median(samples) if samples else 0.0

    def controls(self, label: str) -> list[str]:
        failed: list[str] = []
        if not self.writer_us.get(label):
            failed.append("nothing was measured")
        needed = self.rows * self.loop.announced_per_row
        got = self.notifications.get(label, 0)
        if self.loop.announced_per_row == 0 and got:
            failed.append(f"{got} notifications from writes that must send none")
        if got < needed:
            failed.append(f"{got} notifications for {needed} status changes")
        return failed


def _backend_cpu_us(pid: int) -> float:
    meter = CpuMeter(pid)
    return meter.split()[1] * 1e6


def measure_server_loops(
    tested: dict[str, str],
    url_b: str,
    listeners: dict[str, Listener],
    *,
    mode: str,
    rows: int,
    reps: int,
) -> list[ServerResult]:
    urls = {**tested, "B": url_b}
    conns = {label: psycopg.connect(url, autocommit=True) for label, url in urls.items()}
    results: list[ServerResult] = []
    try:
        for conn in conns.values():
            conn.execute(bench_query("create_write_loops"))
            conn.execute(bench_query("set_synchronous_commit"), {"mode": mode})
        for loop in SERVER_LOOPS:
            ids = [r[0] for r in conns["B"].execute(bench_query(loop.pick), {"limit": rows})]
            result = ServerResult(loop, mode, rows=0)
            labels = list(urls)
            for rep in range(reps + 1):  # repetition 0 warms every side up
                turn = rep % len(labels)
                for label in labels[turn:] + labels[:turn]:
                    conn = conns[label]
                    if loop.reset:
                        conn.execute(bench_query("reset_jobs_pending"), {"ids": ids})
                    if label in listeners:
                        listeners[label].drain()
                    pid = conn.info.backend_pid
                    listener_pid = listeners[label].pid if label in listeners else None
                    before = _backend_cpu_us(pid)
                    heard_before = _backend_cpu_us(listener_pid) if listener_pid else 0.0
                    conn.execute(bench_query(loop.call), {"ids": ids, "worker_id": uuid.uuid4()})
                    spent = _backend_cpu_us(pid) - before
                    sent = listeners[label].drain() if label in listeners else 0
                    heard = _backend_cpu_us(listener_pid) - heard_before if listener_pid else 0.0
                    if rep == 0:
                        continue
                    writes = len(ids) * loop.writes_per_row
                    result.writer_us.setdefault(label, []).append(spent / writes)
                    if listener_pid:
                        result.listener_us.setdefault(label, []).append(heard / writes)
                    result.notifications[label] = result.notifications.get(label, 0) + sent
                if rep > 0:
                    result.rows += len(ids)
            results.append(result)
            summary = ", ".join(f"{label} {result.median(label):.1f}" for label in labels)
            print(f"  server CPU per write, {loop.name}: {summary} us", flush=True)
    finally:
        for conn in conns.values():
            conn.close()
    return results


def server_report(results: Sequence[ServerResult], tested: Sequence[str]) -> tuple[str, list[str]]:
    rows = [[
        "workload (server only)", "side", "sync commit", "writer us/write vs B",
        "+ listener us/write", "B / side (writer)", "B / side (writer + listener)",
        "NOTIFYs (needed)", "controls",
    ]]  # fmt: skip
    summary: list[str] = []
    for res in results:
        b_us = res.median("B")
        needed = res.rows * res.loop.announced_per_row
        for label in tested:
            a_us, heard = res.median(label), res.listener(label)
            failed = res.controls(label)
            rows.append([
                res.loop.name, label, res.mode, f"{a_us:.1f} vs {b_us:.1f}", f"{heard:.1f}",
                f"{b_us / a_us:.1%}", f"{b_us / (a_us + heard):.1%}",
                f"{res.notifications.get(label, 0):,} ({needed:,})",
                "; ".join(failed) or "held",
            ])  # fmt: skip
            summary.append(
                f"server CPU, {res.loop.name}, side {label} (synchronous_commit={res.mode}): "
                f"{a_us:.1f} vs {b_us:.1f} us per write on the writing backend "
                f"(+{heard:.1f} us on the listener): {b_us / a_us:.1%} of trigger-free, "
                f"{b_us / (a_us + heard):.1%} with the listener; "
                f"controls {'; '.join(failed) or 'held'}"
            )
    return table(rows), summary


# ---------------------------------------------------------------------------------------------
# Controls and report
# ---------------------------------------------------------------------------------------------


def install_current_triggers(url: str, alternative: Path | None = None) -> None:
    """Apply this tree's function and trigger files, each in its own transaction as migrate
    does (a reused fleet may have been migrated by another checkout: what is measured must be
    these files, whatever its bookkeeping says), then `alternative`, a function file whose
    CREATE OR REPLACE stands in for the current one."""
    texts = [file.text for file in repeatable_files()]
    if alternative is not None:
        texts.append(alternative.read_text(encoding="utf-8"))
    with psycopg.connect(url, autocommit=True) as conn:
        for text in texts:
            with conn.transaction():
                # Files of this repository or named on the command line, executed verbatim
                # like migrate does.
                conn.execute(sql.SQL(text))


def check_triggers(tested: dict[str, str], b_url: str) -> list[str]:
    """Why the comparison would be meaningless; empty when every tested side has the
    triggers (enabled, no WHEN, no UPDATE OF) and B has none."""
    problems: list[str] = []
    for label, url in tested.items():
        with psycopg.connect(url, autocommit=True) as conn:
            found = conn.execute(bench_query("event_triggers")).fetchall()
        tables = {str(row[1]) for row in found}
        for wanted in ("provisioner_jobs", "workspace_agents", "workspaces", "workspace_builds"):
            if wanted not in tables:
                problems.append(f"{label} has no prebuildd trigger on {wanted}")
        for name, table_name, enabled, has_when, has_columns in found:
            if not enabled or has_when or has_columns:
                problems.append(
                    f"{label}: trigger {name} on {table_name} is not the current kind "
                    f"(enabled={enabled}, WHEN={has_when}, UPDATE OF={has_columns})"
                )
    with psycopg.connect(b_url, autocommit=True) as conn:
        on_b = conn.execute(bench_query("event_triggers")).fetchall()
    if on_b:
        problems.append(f"B still has {len(on_b)} prebuildd triggers")
    return problems


def report(results: Sequence[Result], triggers_ok: bool) -> tuple[str, list[str]]:
    rows = [[
        "workload", "side", "sync commit", "writes/s vs B", "vs B (median of pairs)",
        "CPU us/write vs B", "vs B by CPU", "NOTIFYs (needed)", "target", "verdict",
    ]]  # fmt: skip
    summary: list[str] = []
    for res in results:
        ok = res.met(triggers_ok)
        a_us = res.a_cpu / res.ops * 1e6 if res.ops else 0.0
        b_us = res.b_cpu / res.ops * 1e6 if res.ops else 0.0
        a_rate = res.ops / res.a_seconds if res.a_seconds else 0.0
        b_rate = res.ops / res.b_seconds if res.b_seconds else 0.0
        needed = "0" if res.case.workload.silent else f">= {res.announced_writes:,}"
        target = "info" if res.case.target is None else f">= {res.case.target:.0%}"
        rows.append([
            res.case.label, res.label, res.mode, f"{a_rate:,.0f} vs {b_rate:,.0f}",
            f"{res.ratio:.1%}", f"{a_us:,.0f} vs {b_us:,.0f}", f"{res.cpu_ratio:.1%}",
            f"{res.notifications:,} ({needed})", target, verdict(ok),
        ])  # fmt: skip
        why = "; ".join(res.controls()) or "controls held"
        summary.append(
            f"{res.case.label}, side {res.label} (synchronous_commit={res.mode}): "
            f"{res.ratio:.1%} of trigger-free "
            f"throughput (median of {len(res.pair_ratios)} pairs), {res.cpu_ratio:.1%} by CPU, "
            f"{res.notifications:,} notifications ({needed} needed), "
            f"control heard {res.controls_heard}/{res.controls_run}, {why}; "
            f"target {target}: {verdict(ok)}"
        )
    return table(rows), summary


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def run(server: BenchServer, fleet_db: str, args: argparse.Namespace) -> tuple[list[str], bool]:
    rows = args.rows or (512 if args.quick else 2048)
    rounds = args.rounds or (1 if args.quick else 5)
    urls = {"A": server.clone(fleet_db, f"{fleet_db}_ta")}
    install_current_triggers(urls["A"])
    if args.compare:
        # C: the same, with the function of another file (an alternative being weighed).
        urls["C"] = server.clone(fleet_db, f"{fleet_db}_tc")
        install_current_triggers(urls["C"], args.compare)
    url_b = server.clone(fleet_db, f"{fleet_db}_tb")
    removed = uninstall(url_b)
    setup_problems: list[str] = []
    with psycopg.connect(url_b, autocommit=True) as conn:
        found = conn.execute(bench_query("pick_control_job")).fetchone()
    if found is None:
        setup_problems.append("no prebuild create left for the control job")
    control_job = found[0] if found else uuid.UUID(int=0)
    print(f"B: uninstalled {sum(r.startswith('trigger ') for r in removed)} triggers")
    if args.compare:
        print(f"C: A's triggers with the function of {args.compare}")
    problems = setup_problems + check_triggers(urls, url_b)
    for problem in problems:
        print(f"CONTROL FAILED: {problem}")
    listeners = {label: Listener(url) for label, url in urls.items()}
    pool = ThreadPoolExecutor(max(case.writers for case in CASES))
    tested = [Side(label, url, pool) for label, url in urls.items()]
    for side in tested:
        side.extra_pids = [listeners[side.label].pid]
    b = Side("B", url_b, pool)
    with psycopg.connect(url_b, autocommit=True) as conn:
        row = conn.execute(bench_query("max_connections")).fetchone()
    available = int(row[0]) if row else 0
    cases = [c for c in CASES if not args.case or any(w in c.label for w in args.case)]
    if args.part == "server":
        cases = []
    tables: list[str] = []
    summary: list[str] = []
    # The verdict is A's, the files of this tree; C is there to be compared with.
    all_met = not problems and (bool(cases) or args.part == "server")
    try:
        for mode in args.synchronous_commit or ["on", "off"]:
            results: list[Result] = []
            print(f"\n-- synchronous_commit={mode}: {rows} rows x {rounds} rounds (+1 warm-up)")
            for case in cases:
                with psycopg.connect(url_b, autocommit=True) as conn:
                    picked = conn.execute(bench_query(case.workload.pick), {"limit": rows})
                    ids = [r[0] for r in picked.fetchall()]
                if len(ids) < rows:
                    print(f"  {case.label}: only {len(ids)} rows in this fleet")
                # Every side's writers at once, plus the listeners and a reset connection.
                keep_open = (len(tested) + 1) * case.writers + len(tested) + 2 <= available
                measured = measure_case(
                    case, tested, b, listeners, ids, control_job=control_job, mode=mode,
                    rounds=rounds, base_slice=args.slice, keep_open=keep_open,
                )  # fmt: skip
                note = "" if keep_open else " (reconnecting per slice: max_connections)"
                for res in measured:
                    print(
                        f"  {case.label}, {res.label}: {res.ratio:.1%} (median of "
                        f"{len(res.pair_ratios)} pairs), by CPU {res.cpu_ratio:.1%}, "
                        f"{res.notifications:,} notifications{note}",
                        flush=True,
                    )
                    if res.label == "A":
                        all_met = all_met and res.met(not problems)
                results += measured
            if results:
                text, lines = report(results, not problems)
                tables.append(text)
                summary += lines
            if args.part in ("server", "all"):
                served = measure_server_loops(
                    urls, url_b, listeners, mode=mode, rows=rows, reps=args.server_reps
                )
                text, lines = server_report(served, list(urls))
                tables.append(text)
                summary += lines
                all_met = all_met and not any(r.controls(label) for r in served for label in urls)
    finally:
        for side in [*tested, b]:
            side.close()
        pool.shutdown()
        for listener in listeners.values():
            listener.close()
        for suffix in ("ta", "tb", "tc"):
            server.drop(f"{fleet_db}_{suffix}")
    for text in tables:
        print()
        print(text)
    summary += [f"control failed: {problem}: MISSED" for problem in problems]
    return summary, all_met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    common_args(parser)
    parser.add_argument("--rows", type=int, default=0, help="rows written per round and case")
    parser.add_argument("--rounds", type=int, default=0, help="measured rounds (after warm-up)")
    parser.add_argument("--slice", type=int, default=128, help="rows per A/B slice (at least)")
    parser.add_argument(
        "--part",
        choices=("client", "server", "all"),
        default="all",
        help="client: throughput from client connections (the targets); server: CPU per "
        "write of the same writes made by a procedure on the server; all: both",
    )
    parser.add_argument(
        "--server-reps", type=int, default=7, help="measured repetitions of each server loop"
    )
    parser.add_argument(
        "--compare",
        type=Path,
        help="also measure side C: the current triggers with the function of this file",
    )
    parser.add_argument(
        "--case",
        action="append",
        help="only the cases whose label contains this text (e.g. 'heartbeat', '16 writers')",
    )
    parser.add_argument(
        "--synchronous-commit",
        choices=("on", "off"),
        action="append",
        help="commit mode of the writing sessions (default: both, 'on' first)",
    )
    args = parser.parse_args()
    print_header("bench.trigger_overhead")
    name = "quick" if args.quick else "reaction"
    with bench_server() as server:
        print_server(server)
        fleet_db = ensure_fleet(server, name, SCALES[name], reuse=args.reuse)
        summary, all_met = run(server, fleet_db, args)
    print("\n== summary")
    for line in summary:
        print(f"* {line}")
    print(f"verdict: {verdict(all_met)}")
    if not all_met:
        sys.exit(1)


if __name__ == "__main__":
    main()
