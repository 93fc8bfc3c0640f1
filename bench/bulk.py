"""Write path: 500 prebuilds of one preset in one transaction, and why it is set-based.

In a seeded fleet (on a clone), a fresh preset on the active version of a steady template goes
from desired 0 to 500 and one reconcile of that template runs: the time until all 500
creates are committed (target <= 1 s, SPEC 7) and the rows written per second. Then, side by
side and interleaved, the same 500 creates as one set-based statement
(`store.execute(Create(count=500))`) and as 500 single-create statements (`count=1` in a
loop), each in one transaction, to show what the set-based statement buys.

Every round is undone (untimed) before the next, so each starts from the same state. An
error line logged by the code under test (bench/_common.ServiceErrors) makes the verdict
MISSED, and the bench exits non-zero on MISSED.

    PYTHONPATH=service python -m bench.bulk [--quick] [--reuse] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

from bench._common import CpuMeter, ServiceErrors, Stats, common_args, print_header, verdict
from bench._server import bench_server, print_server
from bench._sql import bench_query
from bench.fleet import SCALES, ensure_fleet, steady_template, template_id, version_id
from prebuildd import store
from prebuildd.model import Create, Plan, PlanConfig
from prebuildd.plan import plan_preset
from prebuildd.reconciler import Cause, Reconciler
from prebuildd.trigger import Trigger

COUNT = 500
TARGET_MS = 1000.0
# A prebuild is a workspace, a job, a build and the preset's parameters (2 in the fleet).
ROWS_PER_PREBUILD = 3 + 2
BULK_PRESET = UUID("00000000-0000-4000-8000-0000000b0500")
PLAN = PlanConfig(max_creates_per_cycle=COUNT)

AConn = AsyncConnection[Any]


class BulkProbe:
    def __init__(self, conn: AConn, template: int, versions: int) -> None:
        self.conn = conn
        self.template = template_id(template)
        self.version = version_id(template, versions)
        self.cpu = CpuMeter(conn.info.backend_pid)

    async def setup(self) -> None:
        params = {"preset_id": BULK_PRESET, "version_id": self.version, "name": "bulk-bench"}
        await self.conn.execute(bench_query("add_preset"), params)

    async def reset(self) -> None:
        await self.conn.execute(bench_query("forget_prebuilds_of_preset"), self._preset())
        await self._set_desired(0)

    async def reconcile_500(self) -> tuple[float, float]:
        """desired 0 -> 500 (committed, untimed), then one timed reconcile of the template."""
        await self._set_desired(COUNT)
        reconciler = Reconciler(PLAN)
        cpu, started = self.cpu.read(), time.perf_counter()
        outcome = await reconciler.reconcile(self.conn, [self.template], Cause(Trigger.CLI))
        elapsed, cpu_used = time.perf_counter() - started, self.cpu.read() - cpu
        created = sum(len(r.created) for r in outcome.results)
        if created != COUNT:
            raise RuntimeError(f"one reconcile created {created} prebuilds, not {COUNT}")
        return elapsed, cpu_used

    async def creates(self, *, per_statement: int) -> float:
        """COUNT creates in one transaction, `per_statement` at a time."""
        plan = await self._plan()
        now = datetime.now(UTC)
        started = time.perf_counter()
        async with self.conn.transaction():
            for _ in range(COUNT // per_statement):
                action = Create(BULK_PRESET, self.version, per_statement)
                await store.execute(self.conn, plan, action, now=now)
        return time.perf_counter() - started

    async def _plan(self) -> Plan:
        async with self.conn.transaction():
            snap = await store.read_snapshot(self.conn, [self.template], config=PLAN)
        ours = next(p for p in snap.presets if p.preset.id == BULK_PRESET)
        return plan_preset(ours, snap.now, PLAN)

    async def _set_desired(self, desired: int) -> None:
        params = {**self._preset(), "desired": desired}
        await self.conn.execute(bench_query("set_preset_desired"), params)

    def _preset(self) -> dict[str, object]:
        return {"preset_id": BULK_PRESET}


async def main_async(args: argparse.Namespace) -> bool:
    """True when the target was met and the code under test logged no error line."""
    print_header("bench.bulk")
    errors = ServiceErrors()
    name = "quick" if args.quick else "reaction"
    rounds = args.rounds or (2 if args.quick else 5)
    spec = SCALES[name]
    with bench_server() as server:
        print_server(server)
        fleet_db = ensure_fleet(server, name, spec, reuse=args.reuse)
        clone = f"{fleet_db}_w"
        url = server.clone(fleet_db, clone)
        try:
            async with await AsyncConnection.connect(url, autocommit=True) as conn:
                probe = BulkProbe(conn, steady_template(spec), spec.versions)
                await probe.setup()
                with errors.watching():
                    summary, met = await _measure(probe, rounds)
        finally:
            server.drop(clone)
    summary.append(errors.summary("the reconciler"))
    print("\n== summary")
    for line in summary:
        print(f"* {line}")
    return errors.verdict(met)


async def _measure(probe: BulkProbe, rounds: int) -> tuple[list[str], bool]:
    print(f"\n-- desired 0 -> {COUNT} on one preset, one reconcile, {rounds} rounds (+1 warm-up)")
    walls: list[float] = []
    cpus: list[float] = []
    for i in range(rounds + 1):
        await probe.reset()
        wall, cpu = await probe.reconcile_500()
        if i > 0:
            walls.append(wall)
            cpus.append(cpu)
    rec = Stats.of(walls)
    rows_per_s = COUNT * ROWS_PER_PREBUILD / (rec.median / 1000)
    print(f"wall: {rec.row()}")
    print(f"CPU (client+server): {Stats.of(cpus).row()}")
    print(f"rows written: {COUNT * ROWS_PER_PREBUILD:,} -> {rows_per_s:,.0f} rows/s (median)")

    print(f"\n-- {COUNT} creates in one transaction: 1 statement vs {COUNT} statements")
    one: list[float] = []
    many: list[float] = []
    for i in range(rounds + 1):
        # Alternate which variant goes first: neither always gets the warmer cache.
        for variant in ("one", "many") if i % 2 == 0 else ("many", "one"):
            await probe.reset()
            elapsed = await probe.creates(per_statement=COUNT if variant == "one" else 1)
            if i > 0:
                (one if variant == "one" else many).append(elapsed)
    await probe.reset()
    s_one, s_many = Stats.of(one), Stats.of(many)
    ratio = s_many.median / s_one.median
    print(f"set-based, 1 statement:     {s_one.row()}")
    print(f"single-create, {COUNT} statements: {s_many.row()}")
    print(f"ratio (medians): {ratio:.1f}x slower row by row")
    met = rec.median <= TARGET_MS
    return [
        f"desired 0 -> {COUNT}: one reconcile commits {COUNT} prebuilds in {rec.median:.0f} ms "
        f"(median of {rec.n}), {rows_per_s:,.0f} rows/s; target <= {TARGET_MS:.0f} ms: "
        f"{verdict(met)}",
        f"{COUNT} creates: set-based {s_one.median:.0f} ms vs {COUNT} single statements "
        f"{s_many.median:.0f} ms ({ratio:.1f}x)",
    ], met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    common_args(parser)
    parser.add_argument("--rounds", type=int, default=0)
    met = asyncio.run(main_async(parser.parse_args()))
    raise SystemExit(0 if met else 1)


if __name__ == "__main__":
    main()
