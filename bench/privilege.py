"""Least-privilege write path: what the service role and its SECURITY DEFINER functions cost.

The service role writes nothing directly any more: every write is a call of a function in
schema `prebuildd` (sql/functions/prebuild_writes.sql). This bench measures, side by side
and interleaved in one run (alternating which side goes first):

* bulk -- 500 creates of one preset in one transaction: `store.execute(Create(count=500))`
  as the service role (prebuildd.create_prebuilds) vs the previous direct statement
  (bench/sql/baseline_writes.sql, kept as the reference only) as the owner of Coder's
  tables. Every round starts from the same state (undone untimed) and must have written
  500 workspaces, builds and jobs and 1,000 build parameters.
* actions -- the writes of a sweep that fixes the fleet's drift (one create, one delete and
  one cancel per drifting template, one call per action), in one transaction that is rolled
  back: the functions as the role vs the previous direct statements as the owner. Both must
  report the same workspaces created, deleted and retired.
* actions in one call -- the same writes as the reconciler sends them since issue 11: all of
  them in one `prebuildd.execute_actions` call (`store.execute_actions`, a subtransaction per
  action) as the role vs the previous direct statements as the owner; same work check, and
  no action may fail.
* targeted -- a real, committed reconcile of one template whose preset wants 2 more
  prebuilds (`Reconciler.reconcile`, undone untimed), as the role vs as the owner; each must
  create 2.
* sweep -- `prebuildd.sweep.sweep_once` over every template of a fresh clone of the fleet:
  the first sweep fixes the drift, the second finds nothing to do (the periodic sweep of a
  healthy fleet); as the role vs as the owner, each on its own clone. Each must plan every
  preset that wants prebuilds, fail none, and the first must create, delete and cancel the
  same numbers on both sides.

Verdict per figure: median(role or functions) / median(owner or baseline) <= 1.10, and the
work happened. The ratio judged is that of CPU time (this process + the server's processes),
what the work costs; wall time, printed beside it, also holds the wait for a core on a shared
machine. (Without a local server, CPU is not measurable and wall time is judged.) Anything
else prints MISSED and the exit status is 1, as is an ERROR log line from the code under
test.

    PYTHONPATH=service python -m bench.privilege [--quick] [--reuse] [--rounds N]
                                                 [--fleet NAME] [--part bulk|actions|targeted|sweep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from bench._common import (
    CpuMeter,
    ServerCpu,
    ServiceErrors,
    Stats,
    common_args,
    print_header,
    verdict,
)
from bench._server import BenchServer, bench_server, print_server
from bench._sql import bench_query
from bench.fleet import (
    SCALES,
    FleetSpec,
    ensure_fleet,
    is_drifting,
    preset_id,
    steady_template,
    template_id,
    version_id,
)
from prebuildd import store
from prebuildd.model import Action, CancelPending, Create, Delete, Plan, PlanConfig
from prebuildd.plan import plan_preset
from prebuildd.reconciler import Cause, Outcome, Reconciler
from prebuildd.sweep import sweep_once
from prebuildd.trigger import Trigger

AConn = AsyncConnection[Any]

ROLE_SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "sql" / "prebuildd-role.sql"
BUDGET = 1.10  # the role's side may cost at most 10 % more
COUNT = 500
BULK_PRESET = UUID("00000000-0000-4000-8000-0000000b0601")
PARTS = ("bulk", "actions", "targeted", "sweep")


@dataclass(frozen=True, slots=True)
class Figure:
    """One side-by-side comparison: samples in seconds, the work check, the verdict."""

    label: str
    new: str
    old: str
    new_wall: list[float]
    old_wall: list[float]
    new_cpu: list[float]
    old_cpu: list[float]
    work: str
    work_ok: bool

    @property
    def ratio(self) -> float:
        return Stats.of(self.new_wall).median / Stats.of(self.old_wall).median

    @property
    def cpu_ratio(self) -> float | None:
        complete = len(self.new_cpu) == len(self.new_wall) and len(self.old_cpu) == len(
            self.old_wall
        )
        if not complete or not self.old_cpu or min(self.old_cpu) <= 0:
            return None
        return Stats.of(self.new_cpu).median / Stats.of(self.old_cpu).median

    @property
    def judged(self) -> tuple[str, float]:
        """The ratio the verdict uses: CPU (client + server) when the server's processes are
        measurable -- what the work costs, unlike wall time, which on a shared machine also
        holds the wait for a core -- else wall time."""
        cpu = self.cpu_ratio
        return ("CPU", cpu) if cpu is not None else ("wall", self.ratio)

    @property
    def met(self) -> bool:
        return self.work_ok and self.judged[1] <= BUDGET

    def report(self) -> str:
        new, old = Stats.of(self.new_wall), Stats.of(self.old_wall)
        lines = [
            f"{self.new:>34}: {new.row()}",
            f"{self.old:>34}: {old.row()}",
        ]
        cpu = self.cpu_ratio
        if cpu is not None:
            lines.append(
                f"{'CPU (client + server) medians':>34}: {Stats.of(self.new_cpu).median:8.2f} ms"
                f" vs {Stats.of(self.old_cpu).median:8.2f} ms (ratio {cpu:.3f})"
            )
        lines.append(f"{'work':>34}: {self.work}")
        return "\n".join(lines)

    def summary(self) -> str:
        cpu = self.cpu_ratio
        cpu_text = f", CPU ratio {cpu:.3f}" if cpu is not None else ""
        new, old = Stats.of(self.new_wall), Stats.of(self.old_wall)
        basis, ratio = self.judged
        return (
            f"{self.label}: {self.new} {new.median:.1f} ms vs {self.old} {old.median:.1f} ms "
            f"(median of {new.n}), wall ratio {self.ratio:.3f}{cpu_text}; {self.work}; "
            f"{basis} ratio {ratio:.3f} <= {BUDGET:.2f} and work done: {verdict(self.met)}"
        )


# ---------------------------------------------------------------------------------------------
# The role, on the bench server
# ---------------------------------------------------------------------------------------------


def apply_role_script(url: str) -> None:
    """deploy/sql/prebuildd-role.sql, as an operator applies it after `prebuildd migrate`."""
    # A file of this repository, never input: as trusted as a literal; sent as is.
    script = sql.SQL(ROLE_SCRIPT.read_text(encoding="utf-8"))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(script)


@dataclass(frozen=True, slots=True)
class Login:
    """A login role that holds only what `prebuildd` holds (created once per run)."""

    name: str
    password: str

    def url(self, owner_url: str) -> str:
        params = conninfo_to_dict(owner_url)
        params.update(user=self.name, password=self.password)
        return make_conninfo("", **params)


@contextlib.contextmanager
def login_role(admin_url: str) -> Iterator[Login]:
    """Needs `prebuildd` to exist: apply the role script to a database first."""
    login = Login(f"pbd_bench_{uuid4().hex[:10]}", secrets.token_urlsafe(16))
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE prebuildd").format(
                sql.Identifier(login.name), sql.Literal(login.password)
            )
        )
    try:
        yield login
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(login.name)))


@dataclass(slots=True)
class Clone:
    """A writable copy of the fleet with the role script applied."""

    server: BenchServer
    name: str
    owner_url: str

    @classmethod
    def of(cls, server: BenchServer, fleet_db: str, suffix: str) -> Clone:
        name = f"{fleet_db}_{suffix}"
        url = server.clone(fleet_db, name)
        apply_role_script(url)
        return cls(server, name, url)

    def drop(self) -> None:
        self.server.drop(self.name)


# ---------------------------------------------------------------------------------------------
# bulk: 500 creates, function as the role vs the previous statement as the owner
# ---------------------------------------------------------------------------------------------


async def run_bulk(clone: Clone, login: Login, spec: FleetSpec, rounds: int) -> Figure:
    steady = steady_template(spec)
    version = version_id(steady, spec.versions)
    print(f"\n-- bulk: {COUNT} creates of one preset in one transaction, {rounds} rounds (+1)")
    async with (
        await AsyncConnection.connect(clone.owner_url, autocommit=True) as owner,
        await AsyncConnection.connect(login.url(clone.owner_url), autocommit=True) as role,
    ):
        params = {"preset_id": BULK_PRESET, "version_id": version, "name": "privilege-bench"}
        await owner.execute(bench_query("add_preset"), params)
        plan = await _bulk_plan(role, template_id(steady))
        role_cpu, owner_cpu = CpuMeter(role.info.backend_pid), CpuMeter(owner.info.backend_pid)

        async def through_function() -> None:
            async with role.transaction():
                action = Create(BULK_PRESET, version, COUNT)
                result = await store.execute(role, plan, action, now=datetime.now(UTC))
            _expect(len(result.created) == COUNT, f"function created {len(result.created)}")

        async def baseline() -> None:
            create = {
                "preset_id": BULK_PRESET,
                "template_version_id": version,
                "count": COUNT,
                "now": datetime.now(UTC),
                "trace_metadata": Jsonb({}),
            }
            async with owner.transaction():
                cur = await owner.execute(bench_query("baseline_create_prebuilds"), create)
                created = len(await cur.fetchall())
            _expect(created == COUNT, f"baseline created {created}")

        figure = Figure("bulk", "function, as the role", "previous statement, as the owner",
                        [], [], [], [], "", True)  # fmt: skip
        written: set[tuple[int, ...]] = set()
        for i in range(rounds + 1):
            sides = [("new", through_function, role_cpu), ("old", baseline, owner_cpu)]
            for side, run, meter in sides if i % 2 == 0 else sides[::-1]:
                await owner.execute(bench_query("forget_prebuilds_of_preset"), _bulk())
                wall, cpu = await _timed(run, meter)
                written.add(await _rows_of_bulk_preset(owner))
                if i > 0:
                    _record(figure, side, wall, cpu)
        await owner.execute(bench_query("forget_prebuilds_of_preset"), _bulk())
    expected = (COUNT, COUNT, COUNT, 2 * COUNT)
    work = f"each round wrote (workspaces, builds, jobs, parameters) in {sorted(written)}"
    return _with_work(figure, work, written == {expected})


async def _bulk_plan(conn: AConn, template: UUID) -> Plan:
    """A real plan of the bench preset (read as the role), for `store.execute`."""
    config = PlanConfig(max_creates_per_cycle=COUNT)
    async with conn.transaction():
        snap = await store.read_snapshot(conn, [template], config=config)
    ours = next(p for p in snap.presets if p.preset.id == BULK_PRESET)
    return plan_preset(ours, snap.now, config)


async def _rows_of_bulk_preset(owner: AConn) -> tuple[int, ...]:
    cur = await owner.execute(bench_query("privilege_rows_of_preset"), _bulk())
    row = await cur.fetchone()
    return tuple(int(v) for v in row) if row else ()


def _bulk() -> dict[str, object]:
    return {"preset_id": BULK_PRESET}


# ---------------------------------------------------------------------------------------------
# actions: the drift's creates, deletes and cancels, functions vs previous statements
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    created: int = 0
    deleted: int = 0
    retired: int = 0

    def key(self) -> tuple[int, int, int]:
        return self.created, self.deleted, self.retired

    def count(self, action: Action, result: store.ActionResult) -> None:
        """What one action wrote: created, given a delete build, or retired (canceled)."""
        self.created += len(result.created)
        if isinstance(action, Delete):
            self.deleted += len(result.deleted)
        elif isinstance(action, CancelPending):
            self.retired += len(result.deleted)


async def run_actions(
    clone: Clone, login: Login, spec: FleetSpec, rounds: int, *, one_call: bool = False
) -> Figure:
    drifting = [template_id(n) for n in range(1, spec.templates + 1) if is_drifting(spec, n)]
    async with (
        await AsyncConnection.connect(clone.owner_url, autocommit=True) as owner,
        await AsyncConnection.connect(login.url(clone.owner_url), autocommit=True) as role,
    ):
        dry = Reconciler(PlanConfig(), dry_run=True)
        outcome = await dry.reconcile(owner, drifting, Cause(Trigger.CLI))
        work = [
            (plan, action)
            for plan in outcome.plans
            for action in plan.actions
            if isinstance(action, Create | Delete | CancelPending)
        ]
        kinds = Counter(type(action).__name__ for _, action in work)
        print(
            f"\n-- actions: the drift of {len(drifting)} templates, {dict(kinds)}, "
            + ("all in one execute_actions call" if one_call else "one call per action")
            + f", in one rolled-back transaction, {rounds} rounds (+1)"
        )
        role_cpu, owner_cpu = CpuMeter(role.info.backend_pid), CpuMeter(owner.info.backend_pid)
        tallies: dict[str, set[tuple[int, int, int]]] = {"new": set(), "old": set()}

        async def through_functions() -> None:
            run = _one_call if one_call else _functions
            tallies["new"].add(await run(role, work))

        async def baseline() -> None:
            tallies["old"].add(await _baseline_statements(owner, work))

        label, new = (
            ("actions in one call", "execute_actions, as the role")
            if one_call
            else ("actions", "functions, as the role")
        )
        figure = Figure(label, new, "previous statements, as the owner",
                        [], [], [], [], "", True)  # fmt: skip
        for i in range(rounds + 1):
            sides = [("new", through_functions, role_cpu), ("old", baseline, owner_cpu)]
            for side, run, meter in sides if i % 2 == 0 else sides[::-1]:
                wall, cpu = await _timed(run, meter)
                if i > 0:
                    _record(figure, side, wall, cpu)
    done = tallies["new"] == tallies["old"] and len(tallies["new"]) == 1
    (created, deleted, retired) = next(iter(tallies["new"]), (0, 0, 0))
    ok = done and created > 0 and deleted > 0 and retired > 0
    text = (
        f"functions {sorted(tallies['new'])} vs statements {sorted(tallies['old'])} "
        "(created, deleted, retired) each round"
    )
    return _with_work(figure, text, ok)


async def _functions(conn: AConn, work: Sequence[tuple[Plan, Action]]) -> tuple[int, int, int]:
    tally = Tally()
    now = datetime.now(UTC)
    async with conn.transaction(force_rollback=True):
        for plan, action in work:
            tally.count(action, await store.execute(conn, plan, action, now=now))
    return tally.key()


async def _one_call(conn: AConn, work: Sequence[tuple[Plan, Action]]) -> tuple[int, int, int]:
    """All of the work in one `execute_actions` call, as the reconciler sends a plan's actions;
    a failed action is an error here (the baseline's statements would have raised)."""
    tally = Tally()
    actions = [action for _, action in work]
    async with conn.transaction(force_rollback=True):
        results = await store.execute_actions(conn, actions, now=datetime.now(UTC))
    for action, result in zip(actions, results, strict=True):
        if isinstance(result, store.ActionFailure):
            raise RuntimeError(f"execute_actions: {action} failed: {result.message}")
        tally.count(action, result)
    return tally.key()


async def _baseline_statements(
    conn: AConn, work: Sequence[tuple[Plan, Action]]
) -> tuple[int, int, int]:
    tally = Tally()
    now = datetime.now(UTC)
    traced = Jsonb({})
    async with conn.transaction(force_rollback=True):
        for _, action in work:
            if isinstance(action, Create):
                params: dict[str, object] = {
                    "preset_id": action.preset_id,
                    "template_version_id": action.template_version_id,
                    "count": action.count,
                    "now": now,
                    "trace_metadata": traced,
                }
                cur = await conn.execute(bench_query("baseline_create_prebuilds"), params)
                tally.created += len(await cur.fetchall())
            elif isinstance(action, Delete):
                params = {
                    "workspace_ids": list(dict.fromkeys(action.workspace_ids)),
                    "now": now,
                    "trace_metadata": traced,
                }
                cur = await conn.execute(bench_query("baseline_delete_prebuilds"), params)
                tally.deleted += len(await cur.fetchall())
            elif isinstance(action, CancelPending):
                params = {"preset_id": action.preset_id, "now": now}
                cur = await conn.execute(bench_query("baseline_cancel_pending_prebuilds"), params)
                tally.retired += len(await cur.fetchall())
    return tally.key()


# ---------------------------------------------------------------------------------------------
# targeted: a real reconcile of one template (2 creates), as the role vs as the owner
# ---------------------------------------------------------------------------------------------


async def run_targeted(clone: Clone, login: Login, spec: FleetSpec, rounds: int) -> Figure:
    steady = steady_template(spec)
    template, preset = template_id(steady), preset_id(steady, spec.versions, 1)
    iterations = rounds * 8
    print(f"\n-- targeted: a real reconcile of one template wanting 2 more, {iterations} rounds")
    async with (
        await AsyncConnection.connect(clone.owner_url, autocommit=True) as owner,
        await AsyncConnection.connect(login.url(clone.owner_url), autocommit=True) as role,
    ):
        reconciler = Reconciler(PlanConfig())
        created: dict[str, set[int]] = {"new": set(), "old": set()}
        meters = {"new": CpuMeter(role.info.backend_pid), "old": CpuMeter(owner.info.backend_pid)}
        conns = {"new": role, "old": owner}

        def reconcile_as(side: str) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                outcome = await reconciler.reconcile(conns[side], [template], Cause(Trigger.CLI))
                ids = [w for r in outcome.results for w in r.created]
                created[side].add(len(ids))
                _expect(not outcome.failed_presets, f"failed presets {outcome.failed_presets}")
                pending.extend(ids)

            return run

        pending: list[UUID] = []
        figure = Figure("targeted", "reconcile, as the role", "reconcile, as the owner",
                        [], [], [], [], "", True)  # fmt: skip
        for i in range(iterations + 2):
            sides = ["new", "old"] if i % 2 == 0 else ["old", "new"]
            for side in sides:
                await _set_desired(owner, preset, spec.desired + 2)
                wall, cpu = await _timed(reconcile_as(side), meters[side])
                await _forget(owner, pending)
                await _set_desired(owner, preset, spec.desired)
                if i > 1:
                    _record(figure, side, wall, cpu)
    ok = created["new"] == created["old"] == {2}
    text = f"creates per reconcile: role {sorted(created['new'])}, owner {sorted(created['old'])}"
    return _with_work(figure, text, ok)


async def _set_desired(owner: AConn, preset: UUID, desired: int) -> None:
    params = {"preset_id": preset, "desired": desired}
    await owner.execute(bench_query("set_preset_desired"), params)


async def _forget(owner: AConn, workspace_ids: list[UUID]) -> None:
    params = {"workspace_ids": list(workspace_ids)}
    await owner.execute(bench_query("forget_jobs_of_workspaces"), params)
    await owner.execute(bench_query("forget_workspaces"), params)
    workspace_ids.clear()


# ---------------------------------------------------------------------------------------------
# sweep: every template of a fresh clone, as the role vs as the owner
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SweepRun:
    reconciled: int  # templates locked and reconciled
    busy: int  # templates skipped because another reconcile held them
    planned: int  # presets planned (presets that cannot act are skipped in real sweeps)
    failed: int
    actions: tuple[int, int, int]


async def run_sweep(
    server: BenchServer, fleet_db: str, login: Login, rounds: int
) -> tuple[Figure, Figure]:
    """Per round, per side (alternating which goes first): a fresh clone, a dry sweep to warm
    it (untimed), the sweep that fixes the drift (timed); then, on that now steady clone,
    steady sweeps of both sides in the order A B B A (timed), so that load that comes and
    goes on the machine hits both sides alike."""
    print(
        f"\n-- sweep: sweep_once on fresh clones (the drift, then steady sweeps A B B A), "
        f"role vs owner, {rounds} rounds"
    )
    with psycopg.connect(server.url(fleet_db), autocommit=True) as conn:
        row = conn.execute(bench_query("privilege_templates_to_sweep")).fetchone()
        meter = ServerCpu.of(conn)
    templates = int(row[0]) if row else -1
    drift = Figure("sweep, fixing the drift", "sweep as the role", "sweep as the owner",
                   [], [], [], [], "", True)  # fmt: skip
    steady = Figure("sweep, steady", "sweep as the role", "sweep as the owner",
                    [], [], [], [], "", True)  # fmt: skip
    drift_runs: list[SweepRun] = []
    steady_runs: list[SweepRun] = []
    for i in range(rounds):
        for side in ("new", "old") if i % 2 == 0 else ("old", "new"):
            clone = Clone.of(server, fleet_db, "priv")
            try:
                urls = {"new": login.url(clone.owner_url), "old": clone.owner_url}
                await sweep_once(urls[side], PlanConfig(), dry_run=True)  # warm, untimed
                run, wall, cpu = await _timed_sweep(urls[side], meter)
                drift_runs.append(run)
                _record(drift, side, wall, cpu)
                other = "old" if side == "new" else "new"
                steady_walls: list[str] = []
                for turn in (side, other, other, side):
                    run, wall, cpu = await _timed_sweep(urls[turn], meter)
                    steady_runs.append(run)
                    _record(steady, turn, wall, cpu)
                    steady_walls.append(f"{'R' if turn == 'new' else 'O'} {wall * 1000:.0f}")
            finally:
                clone.drop()
            print(
                f"round {i + 1}, clone fixed by the {'role ' if side == 'new' else 'owner'}: "
                f"drift {drift.new_wall[-1] if side == 'new' else drift.old_wall[-1]:.3f} s "
                f"{drift_runs[-1].actions}; steady ms: {', '.join(steady_walls)}"
            )
    every = drift_runs + steady_runs
    drift_work = {run.actions for run in drift_runs}
    steady_work = {run.actions for run in steady_runs}
    reconciled = {run.reconciled for run in every}
    planned = sorted({run.planned for run in every})
    failed = sum(run.failed + run.busy for run in every)
    # Coverage: every template locked and reconciled by every sweep, none busy, none failed.
    coverage = reconciled == {templates} and failed == 0
    (drift_actions,) = drift_work if len(drift_work) == 1 else ((0, 0, 0),)
    drift_ok = coverage and len(drift_work) == 1 and min(drift_actions) > 0
    seen = (
        f"templates reconciled per sweep {sorted(reconciled)} of {templates} (presets planned "
        f"{planned}), failed or busy {failed}"
    )
    text = f"{seen}; (created, deleted, canceled) per drift sweep {sorted(drift_work)}"
    steady_text = f"{seen}; actions per steady sweep {sorted(steady_work)}"
    return (
        _with_work(drift, text, drift_ok),
        _with_work(steady, steady_text, coverage and steady_work == {(0, 0, 0)}),
    )


async def _timed_sweep(url: str, meter: ServerCpu) -> tuple[SweepRun, float, float | None]:
    server_before, client_before = meter.read(), time.process_time()
    started = time.perf_counter()
    outcomes = await sweep_once(url, PlanConfig(), dry_run=False)
    wall = time.perf_counter() - started
    cpu = (meter.read() - server_before) + (time.process_time() - client_before)
    return _describe(outcomes), wall, cpu if meter.available else None


def _describe(outcomes: Sequence[Outcome]) -> SweepRun:
    results = [r for o in outcomes for r in o.results]
    created = sum(len(r.created) for r in results)
    deleted = sum(len(r.deleted) for r in results if str(r.kind) == "delete")
    canceled = sum(r.canceled for r in results)
    return SweepRun(
        reconciled=sum(len(o.locked) for o in outcomes),
        busy=sum(len(o.busy) for o in outcomes),
        planned=sum(len(o.plans) for o in outcomes),
        failed=sum(len(o.failed_presets) for o in outcomes),
        actions=(created, deleted, canceled),
    )


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


async def _timed(run: Callable[[], Awaitable[None]], meter: CpuMeter) -> tuple[float, float | None]:
    """Wall and CPU seconds; CPU only when the server's backend is measurable here."""
    cpu_before, started = meter.read(), time.perf_counter()
    await run()
    wall, cpu = time.perf_counter() - started, meter.read() - cpu_before
    return wall, cpu if meter.includes_server else None


def _record(figure: Figure, side: str, wall: float, cpu: float | None) -> None:
    walls, cpus = (
        (figure.new_wall, figure.new_cpu) if side == "new" else (figure.old_wall, figure.old_cpu)
    )
    walls.append(wall)
    if cpu is not None:
        cpus.append(cpu)


def _with_work(figure: Figure, work: str, ok: bool) -> Figure:
    return Figure(
        figure.label, figure.new, figure.old, figure.new_wall, figure.old_wall,
        figure.new_cpu, figure.old_cpu, work, ok,
    )  # fmt: skip


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"the measured work did not happen: {what}")


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> int:
    print_header("bench.privilege")
    name = args.fleet or ("quick" if args.quick else "reaction")
    rounds = args.rounds or (2 if args.quick else 5)
    parts = [args.part] if args.part else list(PARTS)
    spec = SCALES[name]
    figures: list[Figure] = []
    # Errors from the code under test turn every verdict into MISSED (bench/_common.py).
    with bench_server() as server, ServiceErrors().watching() as errors:
        print_server(server)
        fleet_db = ensure_fleet(server, name, spec, reuse=args.reuse)
        clone = Clone.of(server, fleet_db, "privw")
        try:
            with login_role(server.admin_url) as login:
                print(f"service role: {login.name} (member of prebuildd, script applied)")
                if "bulk" in parts:
                    figures.append(await run_bulk(clone, login, spec, rounds))
                if "actions" in parts:
                    figures.append(await run_actions(clone, login, spec, rounds))
                    figures.append(await run_actions(clone, login, spec, rounds, one_call=True))
                if "targeted" in parts:
                    figures.append(await run_targeted(clone, login, spec, rounds))
                for figure in figures:
                    print(f"\n{figure.label}:\n{figure.report()}")
                if "sweep" in parts:
                    drift, steady = await run_sweep(server, fleet_db, login, rounds)
                    for figure in (drift, steady):
                        print(f"\n{figure.label}:\n{figure.report()}")
                    figures += [drift, steady]
        finally:
            clone.drop()
    print("\n== summary")
    for figure in figures:
        print(f"* {figure.summary()}")
    if errors.lines:
        print(f"* errors logged by the code under test: {len(errors.lines)}: MISSED")
        for line in errors.lines[:10]:
            print(f"    {line}")
    ok = bool(figures) and all(f.met for f in figures) and not errors.lines
    print(f"* overall: {verdict(ok)}")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    common_args(parser)
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--fleet", choices=sorted(SCALES), default=None)
    parser.add_argument("--part", choices=PARTS, default=None)
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
