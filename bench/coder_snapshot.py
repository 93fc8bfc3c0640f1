"""Coder's own reconciliation snapshot and prebuildd's full sweep, side by side on one database.

Issue 11, target 2: a full sweep of the `spec` fleet (1,000 templates / 15,000 presets /
~124,000 workspaces) >= 20x faster than Coder's snapshot of the same data. This bench:

1. builds (or, with `--reuse`, finds) a database holding **Coder's real schema** -- its
   `coderd/database/dump.sql`, read with `git show REF:...` from a Coder checkout at run time,
   never copied -- then `prebuildd migrate`, then the `spec` fleet seeded by bench/fleet.py;
   cached across runs, keyed by the fleet spec, the seeding SQL and the dump;
2. on a clone of it (the first real sweep there fixes the fleet's drift, untimed), runs after
   a warm-up, interleaved round by round:
   * Coder's snapshot: the seven reads `StoreReconciler.SnapshotState` makes
     (enterprise/coderd/prebuilds/reconcile.go at the ref), in its order, in one REPEATABLE
     READ, READ ONLY transaction as it does, every row fetched. Their SQL text is read at run
     time from the checkout's coderd/database/queries/*.sql (sqlc `-- name: X :many` blocks),
     its sqlc placeholders turned into psycopg's; only the queries' names and the arguments
     Coder passes live here;
   * prebuildd's full sweep as the CLI runs it (`sweep_once(url, PlanConfig(), dry_run=True)`),
     a real steady sweep in this process (nothing to do), and a real steady sweep in a process
     of its own (bench/scale.py's helpers, with its coverage check: every timed sweep must
     reconcile every template);
3. prints wall medians, the ratios Coder / prebuildd, CPU (this process; the whole server,
   `bench._common.ServerCpu`) and the verdict `>= 20x` computed from the measured ratios.

MISSED (exit 1) when a query is missing from the checkout, when a read that the fleet must
answer returns no or too few rows (the presets, the running prebuilds, the builds in
progress, the schedules), when a sweep did not cover the fleet, or when the ratio is below 20.
Building the fleet takes minutes: `--build-only` builds it and exits (run it outside a
machine-wide lock), then time with `--reuse`.

    PYTHONPATH=service python -m bench.coder_snapshot [--coder-repo PATH] [--ref REF]
        [--reuse] [--build-only] [--rounds N] [--fleet spec|quick|tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import AsyncConnection, IsolationLevel, sql

from bench._common import ServerCpu, ServiceErrors, Stats, print_header, verdict
from bench._server import BenchServer, bench_server, print_server
from bench._sql import bench_query
from bench.fleet import SCALES, BaseSchema, FleetSpec, counts, ensure_fleet, format_counts
from bench.scale import (
    Coverage,
    Fleet,
    ProcessSweep,
    SweepSample,
    listed_templates,
    process_sweep,
    timed_sweep,
)
from prebuildd.model import PlanConfig
from prebuildd.sweep import LANES, sweep_once

DEFAULT_CODER_REPO = "/work/.mirror/viewport-corp+fork-coder/repo"
DEFAULT_REF = "db6e5a2a"
DUMP_PATH = "coderd/database/dump.sql"
QUERIES_DIR = "coderd/database/queries"
TARGET_RATIO = 20.0

# Coder's defaults for the two arguments of its snapshot (codersdk/deployment.go at the ref:
# `workspace-prebuilds-reconciliation-backoff-lookback-period` defaults to 1 h,
# `workspace-prebuilds-failure-hard-limit` to 3). prebuildd's PlanConfig has the same.
CODER_BACKOFF_LOOKBACK = timedelta(hours=1)
CODER_FAILURE_HARD_LIMIT = 3


@dataclass(frozen=True, slots=True)
class CoderRead:
    """One read of Coder's SnapshotState: its sqlc name, and whether the fleet must give it
    rows (a read that returns nothing where the fleet has rows measured nothing)."""

    name: str
    must_return_rows: bool


# The reads of StoreReconciler.SnapshotState (enterprise/coderd/prebuilds/reconcile.go at
# db6e5a2a), in the order it makes them, one REPEATABLE READ, READ ONLY transaction.
SNAPSHOT_READS = (
    CoderRead("GetTemplatePresetsWithPrebuilds", must_return_rows=True),
    CoderRead("GetActivePresetPrebuildSchedules", must_return_rows=True),
    CoderRead("GetRunningPrebuiltWorkspaces", must_return_rows=True),
    CoderRead("CountInProgressPrebuilds", must_return_rows=True),
    # The fleet's drift (a never-picked-up create on an old version) is canceled by the
    # first real sweep, before the timing: none left, like a healthy deployment.
    CoderRead("CountPendingNonActivePrebuilds", must_return_rows=False),
    # The fleet's failed prebuilds are older than the lookback and fewer than the limit.
    CoderRead("GetPresetsBackoff", must_return_rows=False),
    CoderRead("GetPresetsAtFailureLimit", must_return_rows=False),
)


def snapshot_arguments(now: datetime) -> dict[str, dict[str, object]]:
    """The arguments SnapshotState passes to each read (reconcile.go at db6e5a2a), by sqlc
    parameter name."""
    return {
        # GetTemplatePresetsWithPrebuilds(ctx, uuid.NullUUID{}): every template.
        "GetTemplatePresetsWithPrebuilds": {"template_id": None},
        # GetPresetsBackoff(ctx, c.clock.Now().Add(-cfg.ReconciliationBackoffLookback)).
        "GetPresetsBackoff": {"lookback": now - CODER_BACKOFF_LOOKBACK},
        # GetPresetsAtFailureLimit(ctx, cfg.FailureHardLimit).
        "GetPresetsAtFailureLimit": {"hard_limit": CODER_FAILURE_HARD_LIMIT},
    }


# ---------------------------------------------------------------------------------------------
# sqlc query files -> psycopg statements (pure; tests/unit/test_bench_coder_snapshot.py)
# ---------------------------------------------------------------------------------------------


class QueryNotFound(Exception):
    """A read of Coder's snapshot is not in the checkout's query files."""


@dataclass(frozen=True, slots=True)
class SqlcQuery:
    name: str
    command: str  # sqlc's :one, :many, :exec, ...
    text: str  # the block as written, placeholders and comments included


@dataclass(frozen=True, slots=True)
class Statement:
    """A sqlc query ready for psycopg: `%(name)s` placeholders, `%` escaped, no comments."""

    name: str
    text: str
    params: tuple[str, ...]  # parameter names, in order of first appearance


_NAME_LINE = re.compile(r"^--\s*name:\s*(\w+)\s+(:\w+)\s*$", re.MULTILINE)


def sqlc_blocks(text: str) -> dict[str, SqlcQuery]:
    """The `-- name: X :kind` blocks of a sqlc query file: each runs from its name line to the
    next one (or the end); comments that precede the next name line stay in the block and are
    dropped with the other comments by `to_psycopg`."""
    found: dict[str, SqlcQuery] = {}
    marks = list(_NAME_LINE.finditer(text))
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = text[mark.end() : end]
        found[mark.group(1)] = SqlcQuery(mark.group(1), mark.group(2), body.strip("\n"))
    return found


# sqlc's placeholders: sqlc.arg(name) / sqlc.narg(name) (the name quoted or not), @name, $N.
_SQLC_CALL = re.compile(r"sqlc\.n?arg\(\s*'?(\w+)'?\s*\)", re.IGNORECASE)
_AT_NAME = re.compile(r"@([A-Za-z_]\w*)")
_POSITIONAL = re.compile(r"\$(\d+)")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_]\w*)?\$")


def to_psycopg(query: SqlcQuery) -> Statement:
    """Translate a sqlc block into a psycopg statement.

    Outside string literals, quoted identifiers and dollar-quoted bodies: comments are dropped
    (their text may hold quotes or percent signs), `sqlc.arg(x)`, `sqlc.narg(x)` and `@x`
    become `%(x)s`, `$N` becomes `%(pN)s`, and `%` is doubled. The statement's final `;`
    goes. The same name used twice is one parameter (psycopg sends it once, as sqlc does).
    """
    text, out, params = query.text, [], []
    i = 0

    def param(name: str) -> str:
        if name not in params:
            params.append(name)
        return f"%({name})s"

    while i < len(text):
        rest = text[i:]
        if rest.startswith("--"):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end  # the newline itself stays
            continue
        if rest.startswith("/*"):
            end = text.find("*/", i + 2)
            if end < 0:
                raise ValueError(f"{query.name}: unterminated comment")
            out.append(" ")
            i = end + 2
            continue
        if rest[0] in "'\"":
            end = _quoted_end(text, i)
            if end < 0:
                raise ValueError(f"{query.name}: unterminated quote")
            out.append(text[i:end].replace("%", "%%"))
            i = end
            continue
        tag = _DOLLAR_TAG.match(rest)
        if tag and not (i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = text.find(tag.group(0), i + len(tag.group(0)))
            if end < 0:
                raise ValueError(f"{query.name}: unterminated dollar quote")
            end += len(tag.group(0))
            out.append(text[i:end].replace("%", "%%"))
            i = end
            continue
        if match := _SQLC_CALL.match(rest):
            out.append(param(match.group(1)))
            i += match.end()
            continue
        if match := _AT_NAME.match(rest):
            out.append(param(match.group(1)))
            i += match.end()
            continue
        if match := _POSITIONAL.match(rest):
            out.append(param(f"p{match.group(1)}"))
            i += match.end()
            continue
        out.append("%%" if rest[0] == "%" else rest[0])
        i += 1
    statement = "".join(out).strip()
    if statement.endswith(";"):
        statement = statement[:-1].rstrip()
    if ";" in _code_only(statement):
        raise ValueError(f"{query.name}: more than one statement")
    if not statement:
        raise ValueError(f"{query.name}: empty query")
    return Statement(query.name, statement, tuple(params))


def _quoted_end(text: str, start: int) -> int:
    """Index just past the literal or identifier opened at `start` (doubled quotes escape)."""
    quote, i = text[start], start + 1
    while i < len(text):
        if text[i] == quote:
            if i + 1 < len(text) and text[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return -1


def _code_only(statement: str) -> str:
    """The statement without its quoted parts (to look for a second statement)."""
    return re.sub(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"", "''", statement)


def find_statements(files: Mapping[str, str], names: Sequence[str]) -> dict[str, Statement]:
    """The named queries among `files` (path -> text), translated; QueryNotFound if one is
    missing or defined twice."""
    blocks: dict[str, tuple[str, SqlcQuery]] = {}
    for path, text in sorted(files.items()):
        for name, block in sqlc_blocks(text).items():
            if name in names and name in blocks:
                raise QueryNotFound(f"{name} is defined in {blocks[name][0]} and in {path}")
            blocks[name] = (path, block)
    missing = [n for n in names if n not in blocks]
    if missing:
        raise QueryNotFound(f"not in the query files: {', '.join(missing)}")
    try:
        return {name: to_psycopg(blocks[name][1]) for name in names}
    except ValueError as exc:
        raise QueryNotFound(f"cannot read a query: {exc}") from None


def bind(statement: Statement, arguments: Mapping[str, object]) -> dict[str, object]:
    """The statement's parameters from `arguments`; an unknown or unused name is an error
    (a renamed parameter in a newer Coder must not silently become NULL)."""
    missing = [p for p in statement.params if p not in arguments]
    unused = [a for a in arguments if a not in statement.params]
    if missing or unused:
        raise QueryNotFound(
            f"{statement.name}: parameters {list(statement.params)}, given {sorted(arguments)}"
        )
    return {p: arguments[p] for p in statement.params}


# ---------------------------------------------------------------------------------------------
# Coder's checkout
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkout:
    repo: str
    ref: str
    commit: str
    dump: str
    statements: dict[str, Statement]

    @property
    def label(self) -> str:
        return f"{self.ref} ({self.commit[:12]})"


def _git(repo: str, *args: str) -> str:
    done = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise QueryNotFound(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def read_checkout(repo: str, ref: str) -> Checkout:
    commit = _git(repo, "rev-parse", "--verify", f"{ref}^{{commit}}").strip()
    dump = _git(repo, "show", f"{commit}:{DUMP_PATH}")
    paths = _git(repo, "ls-tree", "--name-only", f"{commit}:{QUERIES_DIR}").split()
    files = {
        p: _git(repo, "show", f"{commit}:{QUERIES_DIR}/{p}") for p in paths if p.endswith(".sql")
    }
    statements = find_statements(files, [r.name for r in SNAPSHOT_READS])
    return Checkout(repo, ref, commit, dump, statements)


def coder_base(checkout: Checkout) -> BaseSchema:
    """The fleet's base: Coder's dump.sql of the checkout, and what its migrations write as
    data that the fleet needs (the prebuilds system user)."""

    def load(url: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL(checkout.dump))  # (from the operator's checkout, run as is)
            conn.execute(bench_query("snapshot_prebuilds_user"))
            conn.execute(bench_query("snapshot_relax_organizations"))

    def after_seed(url: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(bench_query("snapshot_restore_organizations"))

    key = hashlib.sha256(checkout.dump.encode()).hexdigest()[:16]
    return BaseSchema(key=f"coder dump.sql {key}", load=load, after_seed=after_seed)


# ---------------------------------------------------------------------------------------------
# Coder's snapshot, timed
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CoderSample:
    wall: float
    client: float
    server: float
    rows: dict[str, int]
    per_read: dict[str, float]  # wall seconds per read


async def coder_snapshot(
    conn: AsyncConnection[Any], checkout: Checkout
) -> tuple[dict[str, int], dict[str, float]]:
    """The seven reads in one REPEATABLE READ, READ ONLY transaction, every row fetched:
    rows and wall seconds per read."""
    arguments = snapshot_arguments(datetime.now(UTC))
    rows: dict[str, int] = {}
    seconds: dict[str, float] = {}
    async with conn.transaction():
        for read in SNAPSHOT_READS:
            statement = checkout.statements[read.name]
            params = bind(statement, arguments.get(read.name, {}))
            started = time.perf_counter()
            # The text comes from the operator's Coder checkout, as coder_releases runs dump.sql.
            cursor = await conn.execute(sql.SQL(statement.text), params)
            rows[read.name] = len(await cursor.fetchall())
            seconds[read.name] = time.perf_counter() - started
    return rows, seconds


async def coder_connection(url: str) -> AsyncConnection[Any]:
    # Coder talks to PostgreSQL through lib/pq (go.mod at the ref): a query with arguments is
    # an unnamed statement parsed and planned at every execution (custom plans), one without
    # goes as a simple query. prepare_threshold=None keeps psycopg from preparing likewise.
    conn = await AsyncConnection.connect(url, prepare_threshold=None)
    await conn.set_isolation_level(IsolationLevel.REPEATABLE_READ)
    await conn.set_read_only(True)
    return conn


async def _timed_coder(
    conn: AsyncConnection[Any], checkout: Checkout, meter: ServerCpu
) -> CoderSample:
    client, server, started = time.process_time(), meter.read(), time.perf_counter()
    rows, per_read = await coder_snapshot(conn, checkout)
    wall, client = time.perf_counter() - started, time.process_time() - client
    return CoderSample(wall, client, meter.read() - server, rows, per_read)


# ---------------------------------------------------------------------------------------------
# Checks and verdicts (pure)
# ---------------------------------------------------------------------------------------------


def expected_rows(spec: FleetSpec) -> dict[str, int]:
    """What the fleet must give the reads that have to answer, after its drift was fixed:
    every preset (all have a prebuild count), every running prebuild of the active versions
    (ready and not yet ready), at least one build in progress and one schedule."""
    return {
        "GetTemplatePresetsWithPrebuilds": spec.presets,
        "GetRunningPrebuiltWorkspaces": spec.templates
        * spec.active_presets
        * (spec.ready + spec.not_ready),
    }


def row_problems(rows: Mapping[str, int], spec: FleetSpec) -> list[str]:
    """Why a snapshot's row counts show it did not read the fleet (empty when they do)."""
    problems: list[str] = []
    exact = expected_rows(spec)
    for read in SNAPSHOT_READS:
        got = rows.get(read.name)
        if got is None:
            problems.append(f"{read.name} did not run")
        elif read.name in exact and got != exact[read.name]:
            problems.append(
                f"{read.name} returned {got:,} rows, the fleet has {exact[read.name]:,}"
            )
        elif read.must_return_rows and got == 0:
            problems.append(f"{read.name} returned no rows")
    return problems


@dataclass(frozen=True, slots=True)
class Ratio:
    label: str
    coder_ms: float
    ours_ms: float

    @property
    def ratio(self) -> float:
        return self.coder_ms / self.ours_ms if self.ours_ms > 0 else 0.0

    def met(self, checks_passed: bool) -> bool:
        return checks_passed and self.ours_ms > 0 and self.ratio >= TARGET_RATIO

    def line(self, checks_passed: bool) -> str:
        return (
            f"Coder's snapshot {self.coder_ms:,.0f} ms / {self.label} {self.ours_ms:,.0f} ms = "
            f"{self.ratio:.1f}x; >= {TARGET_RATIO:.0f}x: {verdict(self.met(checks_passed))}"
        )


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class Samples:
    coder: list[CoderSample] = field(default_factory=list)
    dry: list[SweepSample] = field(default_factory=list)
    real: list[SweepSample] = field(default_factory=list)
    process: list[ProcessSweep] = field(default_factory=list)


async def measure(
    url: str, checkout: Checkout, meter: ServerCpu, coverage: Coverage, rounds: int
) -> Samples:
    """One warm-up round, then `rounds` rounds; the order of the four rotates each round."""
    samples = Samples()
    coder_conn = await coder_connection(url)
    try:

        async def coder(record: bool) -> None:
            sample = await _timed_coder(coder_conn, checkout, meter)
            if record:
                samples.coder.append(sample)

        async def dry(record: bool) -> None:
            sample, _ = await timed_sweep(url, meter, coverage, dry_run=True, lanes=LANES)
            if record:
                samples.dry.append(sample)

        async def real(record: bool) -> None:
            sample, outcomes = await timed_sweep(url, meter, coverage, dry_run=False, lanes=LANES)
            if any(o.results for o in outcomes):
                raise RuntimeError("a steady sweep acted: the fleet's drift was not fixed")
            if record:
                samples.real.append(sample)

        async def process(record: bool) -> None:
            sample = process_sweep(url, coverage)  # blocks: nothing else runs meanwhile
            if record:
                samples.process.append(sample)

        steps: list[Callable[[bool], Any]] = [coder, dry, real, process]
        for i in range(1 + rounds):
            order = steps[i % len(steps) :] + steps[: i % len(steps)]
            for step in order:
                await step(i > 0)
            if i > 0:
                print(
                    f"  round {i}: Coder {samples.coder[-1].wall * 1000:,.0f} ms, dry "
                    f"{samples.dry[-1].wall * 1000:.0f} ms, real steady "
                    f"{samples.real[-1].wall * 1000:.0f} ms, own process "
                    f"{samples.process[-1].sweep * 1000:.0f} ms",
                    flush=True,
                )
    finally:
        await coder_conn.close()
    return samples


def _median_ms(values: Sequence[float]) -> float:
    return statistics.median(values) * 1000


def report(samples: Samples, spec: FleetSpec, coverage: Coverage, meter: ServerCpu) -> list[str]:
    """Print the table; the summary lines (with their verdicts)."""
    server_note = "" if meter.available else " (server CPU not measurable here)"
    print(f"\n-- side by side, {len(samples.coder)} rounds after a warm-up{server_note}")
    rows: list[tuple[str, list[tuple[float, float, float]]]] = [
        (
            "Coder's snapshot (7 reads, 1 transaction)",
            [(s.wall, s.client, s.server) for s in samples.coder],
        ),
        (
            f"prebuildd sweep, dry run ({LANES} lanes)",
            [(s.wall, s.client, s.server) for s in samples.dry],
        ),
        (
            f"prebuildd sweep, real steady ({LANES} lanes)",
            [(s.wall, s.client, s.server) for s in samples.real],
        ),
    ]
    for label, runs in rows:
        wall = Stats.of([r[0] for r in runs])
        print(
            f"{label:46s} {wall.row()}; CPU median client "
            f"{_median_ms([r[1] for r in runs]):,.0f} ms, server "
            f"{_median_ms([r[2] for r in runs]):,.0f} ms"
        )
    process_wall = Stats.of([p.sweep for p in samples.process])
    print(
        f"{'prebuildd sweep, real steady, own process':46s} {process_wall.row()}; process CPU "
        f"median {_median_ms([p.cpu for p in samples.process]):,.0f} ms, peak RSS "
        f"{max(p.peak_rss_mb for p in samples.process):.0f} MB"
    )
    print("Coder's reads, wall median per read (rows):")
    for read in SNAPSHOT_READS:
        per = _median_ms([s.per_read[read.name] for s in samples.coder])
        print(f"  {read.name:34s} {per:10,.1f} ms  ({samples.coder[-1].rows[read.name]:,} rows)")
    problems = sorted({p for s in samples.coder for p in row_problems(s.rows, spec)})
    rows_ok = bool(samples.coder) and not problems
    print(coverage.summary())
    checks = rows_ok and coverage.met
    coder_ms = _median_ms([s.wall for s in samples.coder])
    ratios = [
        Ratio("dry-run sweep", coder_ms, _median_ms([r.wall for r in samples.dry])),
        Ratio("real steady sweep", coder_ms, _median_ms([r.wall for r in samples.real])),
        Ratio(
            "real steady sweep in its own process",
            coder_ms,
            _median_ms([p.sweep for p in samples.process]),
        ),
    ]
    summary = [
        "Coder's reads answered for the fleet: "
        + (verdict(True) if rows_ok else f"{'; '.join(problems)}: {verdict(False)}"),
        coverage.summary(),
    ]
    summary += [r.line(checks) for r in ratios]
    return summary


async def run(args: argparse.Namespace) -> bool:
    print_header("bench.coder_snapshot")
    spec = SCALES[args.fleet]
    checkout = read_checkout(args.coder_repo, args.ref)
    print(
        f"Coder checkout {checkout.repo} at {checkout.label}: dump.sql and "
        f"{len(checkout.statements)} snapshot queries read from it"
    )
    errors = ServiceErrors()
    with bench_server() as server:
        print_server(server)
        fleet = _fleet(server, args.fleet, spec, checkout, args.reuse)
        print(format_counts(counts(fleet.url)))
        if args.build_only:
            print("--build-only: the database is ready; nothing measured, no verdict")
            return True
        with errors.watching():
            summary = await _compare(server, fleet, checkout, args.rounds)
    summary.append(errors.summary("the code under test (sweeps, reconciles)"))
    print("\n== summary")
    for line in summary:
        print(f"* {line}")
    return errors.clean and not any(verdict(False) in line for line in summary)


def _fleet(
    server: BenchServer, name: str, spec: FleetSpec, checkout: Checkout, reuse: bool
) -> Fleet:
    label = f"coder-snapshot-{name}"
    dbname = ensure_fleet(server, label, spec, reuse=reuse, base=coder_base(checkout))
    return Fleet(name, spec, dbname, server.url(dbname))


async def _compare(server: BenchServer, fleet: Fleet, checkout: Checkout, rounds: int) -> list[str]:
    target = f"{fleet.dbname}_w"
    started = time.perf_counter()
    url = server.clone(fleet.dbname, target)
    print(f"cloned {fleet.dbname} in {time.perf_counter() - started:.1f} s")
    try:
        with psycopg.connect(server.admin_url, autocommit=True) as admin:
            meter = ServerCpu.of(admin)
        coverage = Coverage(await listed_templates(url))
        # The fleet's drift fixed first (creates, deletes, cancels), then nothing to do: the
        # periodic sweep of a healthy fleet, which both sides read from here on.
        await sweep_once(url, PlanConfig(), dry_run=True)  # warms the fresh clone's caches
        started = time.perf_counter()
        fixed = await sweep_once(url, PlanConfig(), dry_run=False)
        acted = sum(len(o.results) for o in fixed)
        print(
            f"first real sweep (fixes the drift): {time.perf_counter() - started:.2f} s, "
            f"{acted} action results"
        )
        print(
            f"\n-- {rounds} rounds: Coder's snapshot, dry sweep, real steady sweep, sweep in "
            "its own process (order rotating)"
        )
        samples = await measure(url, checkout, meter, coverage, rounds)
    finally:
        server.drop(target)
    return report(samples, fleet.spec, coverage, meter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--coder-repo", default=DEFAULT_CODER_REPO, help="a Coder git checkout")
    parser.add_argument("--ref", default=DEFAULT_REF, help="the git ref of Coder to read")
    parser.add_argument("--reuse", action="store_true", help="keep/reuse the built database")
    parser.add_argument(
        "--build-only", action="store_true", help="build (or find) the database, then exit"
    )
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (default 5)")
    parser.add_argument("--fleet", choices=("spec", "quick", "tiny"), default="spec")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    try:
        met = asyncio.run(run(args))
    except QueryNotFound as exc:
        print(f"Coder's snapshot cannot be run: {exc}: {verdict(False)}")
        raise SystemExit(1) from None
    raise SystemExit(0 if met else 1)


if __name__ == "__main__":
    main()
