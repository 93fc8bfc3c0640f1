"""How long from a promotion's COMMIT to the service's resulting writes being committed?

The real service runs as a subprocess (`python -m prebuildd.cli run`, the command operators
run) against a clone of the issue's fleet (1,000 templates / 5,000 presets / 50,000
workspaces). 200 templates get a next version whose presets copy the active ones. Once the
service's startup sweep has settled, each of them is promoted in its own transaction, 50 to
100 ms apart, and the bench measures, per promotion:

* commit -> actions committed: from the moment the promotion's COMMIT returns to this
  process, to the moment this process receives the first `provisioner_job_posted`
  notification of that template's new jobs -- the wake-up Coder's provisioners wait for,
  which the create function posts and PostgreSQL delivers when the reconcile's transaction
  commits (creates on the new version, delete builds and cancels on the old one are one
  transaction). The new version's import job carries a tag of its own per template
  (`bench_template`), which the creates' jobs and so their wake-ups carry too. (The service's
  own writes send no prebuildd event since prebuildd.execute_actions, so the bench no longer
  waits for `build_inserted`.) Both ends are read on this process's monotonic clock, so no
  clock skew enters.
* the same two steps on the server's clock, as a cross-check: the promotion's last
  statement (clock_timestamp) -> the reconcile's `now` (the created_at of the new builds,
  taken after the reconcile's lock, before its writes and its commit);
* from the service's own log lines of that reconcile: its trigger, its duration, its lag
  (from the promotion transaction's start, `now()` in the payload, to the reconcile's start:
  NOTIFY delivery, the settle window and the queue) and its stages (`stages_ms`: locks and
  reads, plan, the actions' one call, commit), so the report says where the time goes.

A promotion counts as a reaction only when the reconcile that first created on its new
version was triggered by the promotion's event (its `reconciled` line says trigger "event";
its `preset actions` lines name the new presets). A promotion without any write seen within
10 s, or first acted on by something else (a timer, a retry, a sweep), is a miss: misses
count as infinitely slow in the p50 and the p99, so they can only make a verdict MISSED.
An error line from the service (level=error, a failed callback, a crashed reconcile, a
traceback) makes every verdict MISSED, and the bench exits non-zero on any MISSED.

Side by side, in the same run: the bare NOTIFY round trip (pg_notify on one connection,
received on another; 200 samples), and the whole measurement repeated with a second service
process using another settle window (`--settle 2ms,10ms`: 2 ms is the service's default and
decides the verdict), on another 200 templates. `--cooldown 1s,0` adds the service's
per-template cooldown to the variants (every settle x every cooldown; without it, the
service's default). Targets (issue 11): p50 <= 15 ms, p99 <= 50 ms.

`--touch 300ms` measures the cooldown's cost instead of the common case: before each
promotion, one finished prebuild job of the same template changes status (a job finishing)
and the promotion follows 300 ms later, so the template was reconciled just before its
promotion arrives and the promotion waits for the rest of the cooldown.

    PYTHONPATH=service python -m bench.reaction [--quick] [--reuse] [--promotions N]
                                                [--settle 2ms,10ms] [--cooldown 1s,0]
                                                [--touch 300ms] [--fleet spec-5k]
                                                [--service-log DIR] [--baseline CHECKOUT]

`--baseline /work/main` runs every variant twice, first with the service code of that
checkout, then with this one's, each on its own templates: a before/after side by side. Each
round first runs `prebuildd migrate` with its own code, so the baseline's rounds run with the
baseline's SQL functions too (repeatable files are re-applied when their text differs).

`--fleet spec-5k` runs the same measurement on the 5,000-template fleet (60,000 presets,
~495,000 workspaces; 4 active presets per template, so a promotion's reconcile writes more
than on the default fleet's 3). The targets are stated for the default fleet.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

import anyio
import psycopg
from psycopg import AsyncConnection

from bench._common import ServiceErrors, common_args, load, print_header, table, verdict
from bench._server import BenchServer, bench_server, print_server
from bench._sql import bench_query
from bench.fleet import SCALES, FleetSpec, ensure_fleet, preset_id, template_id, version_id
from prebuildd.config import Settings, format_duration, parse_duration

TARGET_P50_MS = 15.0
TARGET_P99_MS = 50.0
PING_SAMPLES = 200

REPO = Path(__file__).resolve().parent.parent
AConn = AsyncConnection[Any]


# ---------------------------------------------------------------------------------------------
# Latency statistics (nearest-rank percentiles, milliseconds)
# ---------------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of ascending values: the smallest value with at least q% of
    the samples at or below it (p99 of 200 samples is the 198th)."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True, slots=True)
class Latency:
    """Milliseconds."""

    n: int
    p50: float
    p95: float
    p99: float
    maximum: float

    @classmethod
    def of(cls, seconds: Iterable[float]) -> Latency:
        ms = sorted(s * 1000 for s in seconds)
        return cls(len(ms), percentile(ms, 50), percentile(ms, 95), percentile(ms, 99), ms[-1])

    def cells(self) -> list[str]:
        return [
            f"{self.p50:.2f}", f"{self.p95:.2f}", f"{self.p99:.2f}", f"{self.maximum:.2f}",
            str(self.n),
        ]  # fmt: skip


LATENCY_HEADER = ["", "p50 ms", "p95 ms", "p99 ms", "max ms", "n"]


# ---------------------------------------------------------------------------------------------
# The service as a subprocess, with its JSON log lines
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogLine:
    at: float  # time.monotonic() when this process read the line
    fields: dict[str, Any]

    @property
    def reconciled(self) -> bool:
        return self.fields.get("msg") == "reconciled"


def service_env(code: Path | None = None) -> dict[str, str]:
    """The environment of a service subprocess: the package importable (this checkout's, or
    the one in `code`, another checkout's service/ directory), no trace export."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PREBUILDD_"))}
    path = str(code or REPO / "service")
    env["PYTHONPATH"] = f"{path}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else path
    return env


SERVICE_ENTRY = ("-m", "prebuildd.cli", "run")


class ServiceProcess:
    """`python -m prebuildd.cli run ...`; its stderr (JSON logs) parsed by a reader thread."""

    def __init__(
        self,
        url: str,
        extra: Sequence[str],
        entry: Sequence[str] = SERVICE_ENTRY,
        code: Path | None = None,
    ) -> None:
        self.argv = [sys.executable, *entry, "--database-url", url, *extra]
        self.code = code
        self.lines: list[LogLine] = []
        self.started_at = 0.0  # time.monotonic() at start()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("service not started")
        return self._proc.pid

    def command(self, url: str) -> str:
        """The command line, with the database URL shown as a placeholder."""
        shown = ["python" if a == sys.executable else a for a in self.argv]
        return " ".join("<url>" if a == url else (a or "''") for a in shown)

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=service_env(self.code),
            cwd=str(REPO),
        )
        assert self._proc.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self._proc.stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: TextIO) -> None:
        for raw in stream:
            try:
                fields = json.loads(raw)
            except ValueError:
                fields = {"msg": raw.rstrip()}
            if not isinstance(fields, dict):
                fields = {"msg": raw.rstrip()}
            self.lines.append(LogLine(time.monotonic(), fields))

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def reconciles(self, since: float = 0.0) -> list[LogLine]:
        return [line for line in list(self.lines) if line.reconciled and line.at >= since]

    def wait_settled(self, *, templates: int, quiet: float, timeout: float) -> float:
        """Wait until the startup sweep covered `templates` templates and no reconcile was
        logged for `quiet` seconds; returns when it settled, in seconds after start()."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            self._check_alive()
            done = self.reconciles()
            swept = sum(
                int(line.fields.get("templates") or 0)
                for line in done
                if line.fields.get("trigger") == "startup"
            )
            last = done[-1].at if done else None
            if swept >= templates and last is not None and time.monotonic() - last >= quiet:
                return last - self.started_at
            time.sleep(0.05)
        raise TimeoutError(f"the service did not settle within {timeout:.0f} s")

    def wait_quiet(self, quiet: float, timeout: float) -> None:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            self._check_alive()
            done = self.reconciles()
            last = done[-1].at if done else started
            if time.monotonic() - max(last, started) >= quiet:
                return
            time.sleep(0.05)
        raise TimeoutError(f"the service did not go quiet within {timeout:.0f} s")

    def _check_alive(self) -> None:
        if not self.alive():
            tail = "\n".join(str(line.fields.get("msg")) for line in self.lines[-20:])
            raise RuntimeError(f"the service exited early; its last log lines:\n{tail}")

    def stop(self) -> int | None:
        """SIGTERM (a clean shutdown), SIGKILL after 15 s; returns the exit code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        return self._proc.returncode


# ---------------------------------------------------------------------------------------------
# Preparing the clone
# ---------------------------------------------------------------------------------------------

_ADD_VERSION_STEPS = (
    "reaction_add_import_jobs",
    "reaction_add_versions",
    "reaction_add_presets",
    "reaction_add_preset_parameters",
    "reaction_add_schedules",
)


def promoted_numbers(spec: FleetSpec, count: int) -> list[int]:
    """`count` template numbers spread evenly over the fleet (drifting ones included)."""
    count = min(count, spec.templates)
    return sorted({1 + (k * spec.templates) // count for k in range(count)})


def add_next_versions(url: str, numbers: Sequence[int], version: int) -> None:
    params = {"numbers": list(numbers), "version": version}
    with psycopg.connect(url) as conn:
        for step in _ADD_VERSION_STEPS:
            conn.execute(bench_query(step), params)
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(bench_query("vacuum_analyze"))


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


@dataclass
class Arrivals:
    """Notifications seen by the bench's own LISTEN connection, stamped on arrival."""

    # Provisioner wake-ups of the promoted versions' jobs, by template (their bench tag).
    builds: dict[UUID, list[float]] = field(default_factory=dict)
    pings: dict[str, float] = field(default_factory=dict)
    changed: anyio.Event = field(default_factory=anyio.Event)

    def record(self, channel: str, payload: str, at: float) -> None:
        if channel == "bench_ping":
            self.pings[payload] = at
        elif channel == "provisioner_job_posted":
            tags = json.loads(payload).get("tags") or {}
            number = tags.get("bench_template")
            if number is not None:
                self.builds.setdefault(template_id(int(number)), []).append(at)
        self.changed.set()
        self.changed = anyio.Event()

    def first_build_after(self, template: UUID, after: float) -> float | None:
        return next((t for t in self.builds.get(template, ()) if t >= after), None)


@dataclass(frozen=True, slots=True)
class Promotion:
    number: int
    template: UUID
    old_version: UUID
    new_version: UUID
    sent: float  # monotonic, just before COMMIT was sent
    committed: float  # monotonic, when COMMIT returned
    db_statement_at: datetime  # server clock, last statement of the promotion


async def listen(conn: AConn, arrivals: Arrivals) -> None:
    await conn.execute(bench_query("reaction_listen_postings"))
    await conn.execute(bench_query("reaction_listen_ping"))
    async for notify in conn.notifies():
        arrivals.record(notify.channel, notify.payload, time.monotonic())


async def notify_round_trips(conn: AConn, arrivals: Arrivals, samples: int) -> list[float]:
    """pg_notify on `conn` -> arrival on the listening connection, one at a time."""
    seconds: list[float] = []
    for i in range(samples):
        payload = f"ping-{i}"
        sent = time.monotonic()
        await conn.execute(bench_query("reaction_ping"), {"payload": payload})
        with anyio.fail_after(5):
            while payload not in arrivals.pings:
                await arrivals.changed.wait()
        seconds.append(arrivals.pings[payload] - sent)
        await anyio.sleep(0.005)
    return seconds


@dataclass(frozen=True, slots=True)
class Touch:
    """Change one job of the template this long before promoting it (see `--touch`)."""

    seconds: float
    jobs: dict[UUID, UUID]  # template -> a finished prebuild job of it


async def promote_all(
    conn: AConn,
    spec: FleetSpec,
    numbers: Sequence[int],
    version: int,
    seed: int,
    touch: Touch | None = None,
) -> list[Promotion]:
    rng = random.Random(seed)
    done: list[Promotion] = []
    for n in numbers:
        tpl, old, new = template_id(n), version_id(n, spec.versions), version_id(n, version)
        if touch is not None and tpl in touch.jobs:
            async with conn.transaction():
                await conn.execute(bench_query("storm_flip_jobs"), {"job_ids": [touch.jobs[tpl]]})
            await anyio.sleep(touch.seconds)
        async with conn.transaction():
            cur = await conn.execute(
                bench_query("reaction_promote"), {"template_id": tpl, "version_id": new}
            )
            row = await cur.fetchone()
            sent = time.monotonic()
        committed = time.monotonic()
        assert row is not None, f"template {n} not found"
        done.append(Promotion(n, tpl, old, new, sent, committed, row[0]))
        await anyio.sleep(rng.uniform(0.05, 0.1))
    return done


async def wait_for_actions(arrivals: Arrivals, promotions: Sequence[Promotion]) -> None:
    """Until every promotion's actions were seen, or 10 s passed."""
    with anyio.move_on_after(10):
        while any(arrivals.first_build_after(p.template, p.sent) is None for p in promotions):
            await arrivals.changed.wait()


@dataclass
class Measured:
    pings: list[float]
    promotions: list[Promotion]
    arrivals: Arrivals
    since: datetime


def touch_jobs(url: str, numbers: Sequence[int]) -> dict[UUID, UUID]:
    """One finished prebuild job per template whose status change no plan depends on."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            bench_query("storm_jobs"), {"template_ids": [template_id(n) for n in numbers]}
        ).fetchall()
    jobs: dict[UUID, UUID] = {}
    for job, template in rows:
        jobs.setdefault(template, job)
    return jobs


async def measure(
    url: str, spec: FleetSpec, numbers: Sequence[int], version: int, touch: Touch | None
) -> Measured:
    arrivals = Arrivals()
    async with (
        await AsyncConnection.connect(url, autocommit=True) as listener,
        await AsyncConnection.connect(url, autocommit=True) as pinger,
        await AsyncConnection.connect(url) as promoter,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(listen, listener, arrivals)
        await anyio.sleep(0.2)  # LISTEN is in place before the first ping
        pings = await notify_round_trips(pinger, arrivals, PING_SAMPLES)
        cur = await pinger.execute(bench_query("reaction_now"))
        row = await cur.fetchone()
        assert row is not None
        since: datetime = row[0]
        promotions = await promote_all(promoter, spec, numbers, version, seed=7, touch=touch)
        await wait_for_actions(arrivals, promotions)
        tg.cancel_scope.cancel()
    return Measured(pings, promotions, arrivals, since)


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verified:
    created: int
    first_create_at: datetime | None
    deleted: int
    canceled: int


def verify(url: str, m: Measured) -> dict[UUID, Verified]:
    params = {
        "since": m.since,
        "template_ids": [p.template for p in m.promotions],
        "old_version_ids": [p.old_version for p in m.promotions],
        "new_version_ids": [p.new_version for p in m.promotions],
    }
    with psycopg.connect(url) as conn:
        rows = conn.execute(bench_query("reaction_verify"), params).fetchall()
    return {r[0]: Verified(int(r[1]), r[2], int(r[3]), int(r[4])) for r in rows}


@dataclass(frozen=True, slots=True)
class Acting:
    """One `reconciled` log line of the service and the promoted templates it created on."""

    at: float  # time.monotonic() when this process read the line
    fields: dict[str, Any]
    templates: frozenset[UUID]

    @property
    def trigger(self) -> str:
        return str(self.fields.get("trigger"))


def acting_reconciles(lines: Sequence[LogLine], new_presets: Mapping[UUID, UUID]) -> list[Acting]:
    """Every reconcile that created on a new version's preset, in log order.

    The service logs a reconcile as one `reconciled` line (trigger, duration, lag) followed
    by one `preset actions` line per preset that acted (its preset id and action kinds), all
    from one synchronous call: the lines after a `reconciled` line, up to the next one, are
    its own. `new_presets` maps each promoted version's preset to its template.
    """
    found: list[Acting] = []
    current: LogLine | None = None
    templates: set[UUID] = set()

    def close() -> None:
        if current is not None and templates:
            found.append(Acting(current.at, current.fields, frozenset(templates)))

    for line in lines:
        msg = line.fields.get("msg")
        if msg == "reconciled":
            close()
            current, templates = line, set()
        elif msg == "preset actions" and current is not None:
            preset = _uuid(line.fields.get("preset_id"))
            template = new_presets.get(preset) if preset is not None else None
            if template is not None and "create" in (line.fields.get("actions") or ()):
                templates.add(template)
    close()
    return found


def _uuid(value: object) -> UUID | None:
    try:
        return UUID(str(value))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Reaction:
    """Per promotion: the measured reaction (seconds), or why it is a miss."""

    promotion: Promotion
    seconds: float | None
    db_side: float | None
    acting: Acting | None
    miss: str | None


@dataclass
class Round:
    """One service process, one variant (settle, cooldown), its own promoted templates."""

    label: str
    default: bool  # the service's own settings: this round decides the verdict
    startup: float
    measured: Measured
    verified: dict[UUID, Verified]
    lines: list[LogLine]
    new_presets: dict[UUID, UUID]
    errors: ServiceErrors

    def reactions(self) -> list[Reaction]:
        """Promotion commit -> actions seen, with the acting reconcile and its trigger."""
        acting = acting_reconciles(self.lines, self.new_presets)
        out: list[Reaction] = []
        for p in self.measured.promotions:
            seen = self.measured.arrivals.first_build_after(p.template, p.sent)
            first = next((a for a in acting if p.template in a.templates and a.at >= p.sent), None)
            miss = None
            if seen is None:
                miss = "no write seen within 10 s"
            elif first is None:
                miss = "writes seen, but no reconcile logged creating on the new version"
            elif first.trigger != "event":
                miss = f"first acted on by a {first.trigger!r} reconcile, not by its event"
            created = self.verified[p.template].first_create_at
            out.append(
                Reaction(
                    promotion=p,
                    seconds=None if seen is None else seen - p.committed,
                    db_side=None if created is None
                    else (created - p.db_statement_at).total_seconds(),
                    acting=first,
                    miss=miss,
                )
            )
        return out


def with_misses(seconds: Sequence[float], misses: int) -> list[float]:
    """The samples a verdict is judged on: every miss counts as infinitely slow."""
    return [*seconds, *([math.inf] * misses)]


def report(rounds: Sequence[Round]) -> bool:
    """Print every round side by side; the verdict is the default settings' round."""
    rows = [LATENCY_HEADER]
    for r in rounds:
        rows.extend(_round_rows(r))
    print(table(rows))
    for r in rounds:
        _print_writes(r)
    verdicts = {r.label: _verdict(r) for r in rounds}
    decisive = [r for r in rounds if r.default]
    if not decisive:
        print("verdict: none, the service's default settings were not among those run: MISSED")
        return False
    met = all(verdicts[decisive[0].label])
    print(f"verdict ({decisive[0].label}, the service's defaults): {verdict(met)}")
    return met


def _round_rows(r: Round) -> list[list[str]]:
    reactions = r.reactions()
    counted = [x for x in reactions if x.miss is None]
    label = r.label
    rows = [[f"{label} bare NOTIFY round trip", *Latency.of(r.measured.pings).cells()]]
    by_event = [x.acting for x in counted if x.acting is not None]
    parts: list[tuple[str, Sequence[float | None]]] = [
        ("promotion commit -> actions committed", [x.seconds for x in counted]),
        ("  (server clock) promotion -> reconcile now", [x.db_side for x in counted]),
        (
            "  (service log) promotion start -> reconcile start",
            [float(a.fields["lag_ms"]) / 1000 for a in by_event if a.fields.get("lag_ms")],
        ),
        (
            "  (service log) reconcile duration",
            [float(a.fields.get("duration_ms") or 0.0) / 1000 for a in by_event],
        ),
    ]
    for stage in _stage_names(by_event):
        parts.append(
            (
                f"    stage {stage}",
                [_stage_seconds(a, stage) for a in by_event],
            )
        )
    for name, values in parts:
        present = [v for v in values if v is not None]
        if present:
            rows.append([f"{label} {name}", *Latency.of(present).cells()])
    return rows


def _stage_names(acting: Sequence[Acting]) -> list[str]:
    """The stages the service logged (`stages_ms` of its `reconciled` lines), first seen first."""
    names: dict[str, None] = {}
    for a in acting:
        stages = a.fields.get("stages_ms")
        if isinstance(stages, dict):
            names.update(dict.fromkeys(str(k) for k in stages))
    return list(names)


def _stage_seconds(acting: Acting, stage: str) -> float | None:
    stages = acting.fields.get("stages_ms")
    if not isinstance(stages, dict) or stage not in stages:
        return None
    return float(stages[stage]) / 1000


def _verdict(r: Round) -> tuple[bool, bool]:
    reactions = r.reactions()
    counted = [x.seconds for x in reactions if x.miss is None and x.seconds is not None]
    misses = [x for x in reactions if x.miss is not None]
    for reason, n in Counter(x.miss for x in misses).items():
        print(f"{r.label} {n} promotion(s) missed: {reason}")
    print(f"{r.label} {r.errors.summary()}")
    if not counted:
        print(f"{r.label} no promotion was reacted to by its event: MISSED")
        return False, False
    judged = sorted(s * 1000 for s in with_misses(counted, len(misses)))
    p50, p99 = percentile(judged, 50), percentile(judged, 99)
    met50 = r.errors.verdict(p50 <= TARGET_P50_MS)
    met99 = r.errors.verdict(p99 <= TARGET_P99_MS)
    print(
        f"{r.label} target p50 <= {TARGET_P50_MS:.0f} ms: {verdict(met50)} ({_ms(p50)}); "
        f"p99 <= {TARGET_P99_MS:.0f} ms: {verdict(met99)} ({_ms(p99)}); {len(counted)} of "
        f"{len(reactions)} promotions reacted to by their event, {len(misses)} missed "
        f"(counted as infinitely slow)"
    )
    return met50, met99


def _ms(value: float) -> str:
    return "a miss" if math.isinf(value) else f"{value:.2f} ms"


def _print_writes(r: Round) -> None:
    v = [r.verified[p.template] for p in r.measured.promotions]
    unseen = sum(1 for x in r.reactions() if x.seconds is None)
    complete = sum(1 for x in v if x.created and x.deleted and x.canceled)
    print(
        f"{r.label} startup settled after {r.startup:.2f} s; writes after {len(v)} "
        f"promotions: {sum(x.created for x in v):,} prebuilds created on the new versions, "
        f"{sum(x.deleted for x in v):,} delete builds and {sum(x.canceled for x in v):,} "
        f"canceled jobs on the old ones; {complete} promotions with all three, {unseen} "
        f"without any write seen"
    )


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Variant:
    settle: str
    cooldown: str | None  # None: the service's default
    code: Path | None = None  # another checkout's service/ (--baseline); None: this one's

    @property
    def label(self) -> str:
        cooldown = "" if self.cooldown is None else f", cooldown {self.cooldown}"
        code = "" if self.code is None else f", code {self.code.parent.name}"
        return f"[settle {self.settle}{cooldown}{code}]"

    @property
    def default(self) -> bool:
        """The service's own settings (what operators get, what decides the verdict)."""
        if self.code is not None:
            return False  # a baseline to compare with, never the verdict
        defaults = Settings()
        settle_is = parse_duration(self.settle) == defaults.settle
        cooldown_is = self.cooldown is None or parse_duration(self.cooldown) == defaults.cooldown
        return settle_is and cooldown_is

    def flags(self) -> list[str]:
        cooldown = [] if self.cooldown is None else ["--cooldown", self.cooldown]
        return ["--settle", self.settle, *cooldown]


def new_presets_of(spec: FleetSpec, numbers: Sequence[int], version: int) -> dict[UUID, UUID]:
    """Each promoted version's preset -> its template (reaction_add_presets keeps the ids)."""
    return {
        preset_id(n, version, p): template_id(n)
        for n in numbers
        for p in range(1, spec.active_presets + 1)
    }


def run_round(
    url: str,
    spec: FleetSpec,
    numbers: Sequence[int],
    version: int,
    variant: Variant,
    touch: float | None,
    log_dir: Path | None = None,
    baselined: bool = False,
) -> Round:
    extra = ["--sweep-interval", "1h", "--metrics-addr", "", "--no-migrate", *variant.flags()]
    if baselined:
        # The SQL functions of the code this round runs (prebuildd migrate re-applies the
        # repeatable files whose checksum differs): a baseline round gets its own.
        migrate_with(url, variant.code)
    service = ServiceProcess(url, extra, code=variant.code)
    print(f"service: {service.command(url)}")
    service.start()
    try:
        startup = service.wait_settled(templates=spec.templates, quiet=2.0, timeout=180)
        touched = None if touch is None else Touch(touch, touch_jobs(url, numbers))
        if touched is not None:
            print(f"{variant.label} {len(touched.jobs)} of {len(numbers)} templates touched")
        measured = anyio.run(measure, url, spec, numbers, version, touched)
        service.wait_quiet(1.0, timeout=60)
    finally:
        code = service.stop()
        print(f"service stopped (exit code {code})")
    lines = list(service.lines)
    if log_dir is not None:
        save_log(log_dir, variant, lines)
    errors = ServiceErrors().scan(line.fields for line in lines)
    if code != 0:
        errors.lines.append(f"the service exited with code {code} on SIGTERM")
    return Round(
        variant.label, variant.default, startup, measured, verify(url, measured), lines,
        new_presets_of(spec, numbers, version), errors,
    )  # fmt: skip


def migrate_with(url: str, code: Path | None) -> None:
    """`prebuildd migrate` with the service code of `code` (None: this checkout's)."""
    argv = [sys.executable, "-m", "prebuildd.cli", "migrate", "--database-url", url]
    started = time.monotonic()
    done = subprocess.run(
        argv, env=service_env(code), cwd=str(REPO), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"migrate with {code or 'this checkout'} failed:\n{done.stderr[-2000:]}")
    print(f"migrated with {code or 'this checkout'} in {time.monotonic() - started:.1f} s")


def save_log(log_dir: Path, variant: Variant, lines: Sequence[LogLine]) -> None:
    """The service's log lines of one round, each with this process's monotonic arrival time
    (`_at`, the clock of the promotions' stamps), for looking into a tail afterwards."""
    log_dir.mkdir(parents=True, exist_ok=True)
    name = "".join(c if c.isalnum() else "-" for c in variant.label).strip("-")
    path = log_dir / f"service-{name}.jsonl"
    with path.open("w") as out:
        for line in lines:
            out.write(json.dumps({"_at": line.at, **line.fields}) + "\n")
    print(f"{variant.label} service log: {len(lines):,} lines in {path}")


def run(server: BenchServer, args: argparse.Namespace) -> bool:
    """True when the round with the service's default settings met both targets."""
    name = args.fleet or ("quick" if args.quick else "reaction")
    spec = SCALES[name]
    count = args.promotions or (20 if args.quick else 200)
    settles = [s.strip() for s in args.settle.split(",") if s.strip()]
    cooldowns: list[str | None] = [c.strip() for c in args.cooldown.split(",") if c.strip()]
    codes: list[Path | None] = [None]
    if args.baseline is not None:
        baseline = args.baseline.resolve() / "service"
        if not (baseline / "prebuildd").is_dir():
            raise SystemExit(f"--baseline {args.baseline}: no service/prebuildd there")
        codes = [baseline, None]  # the baseline first, then this checkout, per setting
    variants = [
        Variant(s, c, code) for s in settles for c in cooldowns or [None] for code in codes
    ]
    touch = parse_duration(args.touch).total_seconds() if args.touch else None
    dbname = ensure_fleet(server, name, spec, reuse=args.reuse)
    started = time.monotonic()
    url = server.clone(dbname, f"{dbname}_rx")
    print(f"cloned {dbname} in {time.monotonic() - started:.1f} s")
    try:
        everyone = promoted_numbers(spec, count * len(variants))
        version = spec.versions + 1
        add_next_versions(url, everyone, version)
        print(
            f"added version {version} (copying the active presets) to {len(everyone)} "
            f"templates; per variant, {count} of them promoted 50-100 ms apart, each "
            f"in its own transaction"
            + ("" if touch is None else f", each {touch * 1000:.0f} ms after a job of it changed")
        )
        rounds = [
            run_round(
                url, spec, everyone[r :: len(variants)], version, variant, touch,
                args.service_log, baselined=args.baseline is not None,
            )
            for r, variant in enumerate(variants)
        ]
        met = report(rounds)
    finally:
        server.drop(f"{dbname}_rx")
    print(f"after the runs: {load()}")
    return met


DEFAULT_SETTLES = f"{format_duration(Settings().settle)},10ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    common_args(parser)
    parser.add_argument(
        "--promotions", type=int, default=0, help="per variant; default 200 (20 quick)"
    )
    parser.add_argument(
        "--service-log",
        type=Path,
        default=None,
        metavar="DIR",
        help="write each service's log lines (JSON, with arrival times) to DIR",
    )
    parser.add_argument(
        "--fleet",
        choices=sorted(SCALES),
        default="",
        help="measure on another named fleet of bench/fleet.py (default: reaction, or quick "
        "with --quick); spec-5k gives the issue's 5,000-template figure",
    )
    parser.add_argument(
        "--cooldown",
        default="",
        help="service cooldowns to compare, comma-separated, each with every settle window "
        "(default: the service's own)",
    )
    parser.add_argument(
        "--touch",
        default="",
        help="change a job of each template this long before promoting it (e.g. 300ms): "
        "the cost of the cooldown",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="CHECKOUT",
        help="also run every variant with the service code of another checkout (its "
        "service/ directory; e.g. the main branch's worktree), just before this checkout's: "
        "a before/after side by side in one run (each round migrates with its code first, "
        "so the SQL functions are its own too)",
    )
    parser.add_argument(
        "--settle",
        default=DEFAULT_SETTLES,
        help=f"service settle windows to compare, one service run each (default "
        f"{DEFAULT_SETTLES}; the service's default, {format_duration(Settings().settle)}, "
        f"decides the verdict)",
    )
    args = parser.parse_args()
    print_header("bench.reaction")
    with bench_server() as server:
        print_server(server)
        met = run(server, args)
    raise SystemExit(0 if met else 1)


if __name__ == "__main__":
    main()
