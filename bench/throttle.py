"""The cap on pending prebuild jobs (`--max-pending-prebuild-jobs`): its cost, side by side.

In a seeded fleet (on a clone), a fresh preset on the active version of a steady template.
Each round undoes the last (untimed), sets the preset's desired count (committed, untimed)
and times one reconcile of the template, alternately without the cap ("off") and with it
("on"), the order flipping every round. Scenarios:

* create 10 with the seeded queue: the fleet is seeded without a cap, with ~1,000 prebuild
  jobs queued per organization; the cap's count reads them all (the state just after turning
  the cap on over a backlog). Then, on the clone, a provisioner takes them and a vacuum
  follows (untimed), leaving the queue a cap keeps: only what the rounds create;
* create 10 / create 500: the cap is high enough to hold nothing, so both sides write the same
  rows and the difference is the throttle's own work (the tag set's lock, the count of its
  pending prebuild creates and the read of its line, the capped create's own count);
* nothing to create: what every reconcile pays while the cap is on (one more round trip);
* create 10 with 2,000 of people's jobs queued: the count must not read them (prebuildd's
  index of queued prebuild jobs);
* create 10, hold 10: "on" wants 20 under a cap of 10 and writes the line; "off" wants 10.

Cost is CPU time (client + the server backend): on a shared machine wall time mostly measures
waiting for a core; wall is printed beside it. Every "on" round is checked to have gone
through the cap (the creates carry it, the held round held and queued its rest): a run that
did not exercise the throttle fails instead of printing figures, and so does one in which the
reconciler logged an error line (exit status 1).

    PYTHONPATH=service python -m bench.throttle [--quick] [--reuse] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

from bench._common import CpuMeter, ServiceErrors, Stats, common_args, print_header, table
from bench._server import bench_server, print_server
from bench._sql import bench_query
from bench.fleet import SCALES, ensure_fleet, steady_template, template_id, version_id
from prebuildd.model import Create, PlanConfig
from prebuildd.reconciler import Cause, Outcome, Reconciler
from prebuildd.trigger import Trigger

PRESET = UUID("00000000-0000-4000-8000-0000000b7711")
BACKLOG = 2_000
# High enough to hold nothing: "on" then writes exactly what "off" writes.
NO_HOLD = 1_000_000

AConn = AsyncConnection[Any]


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    # (desired, cap) of each side; cap 0 is "off".
    off: tuple[int, int]
    on: tuple[int, int]
    created: int
    held: int = 0
    backlog: int = 0
    # After this one, a provisioner takes the organization's queued prebuild jobs.
    drain_after: bool = False


def scenarios(quick: bool, seeded_queue: int) -> list[Scenario]:
    big = 100 if quick else 500
    return [
        Scenario(
            f"create 10, {seeded_queue:,} prebuild jobs queued (as seeded)", (10, 0),
            (10, NO_HOLD), 10, drain_after=True,
        ),
        Scenario("create 10", (10, 0), (10, NO_HOLD), 10),
        Scenario(f"create {big}", (big, 0), (big, NO_HOLD), big),
        Scenario("nothing to create", (0, 0), (0, NO_HOLD), 0),
        Scenario(
            f"create 10, {BACKLOG:,} people's jobs queued", (10, 0), (10, NO_HOLD), 10,
            backlog=BACKLOG,
        ),
        # The cap of "on" is set above the tag set's queued prebuild jobs (see run_scenario).
        Scenario("create 10, hold 10 (line written)", (10, 0), (20, 10), 10, held=10),
    ]


class ThrottleProbe:
    def __init__(self, conn: AConn, template: int, versions: int) -> None:
        self.conn = conn
        self.template = template_id(template)
        self.version = version_id(template, versions)
        self.cpu = CpuMeter(conn.info.backend_pid)
        self._backlog: list[UUID] = []

    async def setup(self) -> None:
        params = {"preset_id": PRESET, "version_id": self.version, "name": "throttle-bench"}
        await self.conn.execute(bench_query("add_preset"), params)

    async def reset(self) -> None:
        await self.conn.execute(bench_query("forget_prebuilds_of_preset"), {"preset_id": PRESET})
        await self.conn.execute(bench_query("forget_throttle_line"))
        await self._set_desired(0)

    async def queue_backlog(self, count: int) -> None:
        cur = await self.conn.execute(bench_query("a_user"))
        row = await cur.fetchone()
        if row is None:
            raise RuntimeError("the fleet has no user to queue jobs for")
        params = {"template_id": self.template, "user_id": row[0], "count": count}
        cur = await self.conn.execute(bench_query("seed_people_backlog"), params)
        self._backlog = [r[0] for r in await cur.fetchall()]

    async def drop_backlog(self) -> None:
        if self._backlog:
            await self.conn.execute(bench_query("forget_jobs"), {"job_ids": self._backlog})
            self._backlog = []

    async def queued_prebuild_jobs(self) -> int:
        params = {"template_id": self.template}
        cur = await self.conn.execute(bench_query("queued_prebuild_jobs_of_org"), params)
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def drain_queue(self) -> None:
        params = {"template_id": self.template}
        await self.conn.execute(bench_query("start_queued_prebuild_jobs_of_org"), params)
        await self.conn.execute(bench_query("vacuum_jobs"))

    async def pending_in_tag_set(self) -> int:
        cur = await self.conn.execute(
            bench_query("pending_in_tag_set"), {"version_id": self.version}
        )
        row = await cur.fetchone()
        if row is None:
            raise RuntimeError("the bench preset's version has no tag set")
        return int(row[0])

    async def reconcile(self, desired: int, cap: int) -> tuple[float, float, Outcome]:
        await self._set_desired(desired)
        reconciler = Reconciler(PlanConfig(max_pending_prebuild_jobs=cap))
        cpu, started = self.cpu.read(), time.perf_counter()
        outcome = await reconciler.reconcile(self.conn, [self.template], Cause(Trigger.CLI))
        return time.perf_counter() - started, self.cpu.read() - cpu, outcome

    async def _set_desired(self, desired: int) -> None:
        await self.conn.execute(
            bench_query("set_preset_desired"), {"preset_id": PRESET, "desired": desired}
        )


def _check(scenario: Scenario, side: str, cap: int, outcome: Outcome) -> None:
    """The round did what the scenario says, through the cap on the "on" side."""
    created = sum(len(r.created) for r in outcome.results if r.preset_id == PRESET)
    plans = [p for p in outcome.plans if p.preset.id == PRESET]
    if created != scenario.created or len(plans) != 1:
        raise RuntimeError(f"{scenario.name} ({side}): created {created}, not {scenario.created}")
    plan = plans[0]
    capped = [a.max_pending for a in plan.actions if isinstance(a, Create)]
    if side == "on" and scenario.created and capped != [cap]:
        raise RuntimeError(f"{scenario.name}: the create did not go through the cap ({capped})")
    if side == "on" and plan.state.held != scenario.held:
        raise RuntimeError(f"{scenario.name}: held {plan.state.held}, not {scenario.held}")


async def run_scenario(probe: ThrottleProbe, scenario: Scenario, rounds: int) -> list[str]:
    samples: dict[str, tuple[list[float], list[float]]] = {"off": ([], []), "on": ([], [])}
    if scenario.backlog:
        await probe.queue_backlog(scenario.backlog)
    # A cap that holds counts from the fleet's own queued prebuild jobs of that tag set.
    base = await probe.pending_in_tag_set() if scenario.held else 0
    try:
        for i in range(rounds + 1):
            for side in ("off", "on") if i % 2 == 0 else ("on", "off"):
                desired, cap = scenario.off if side == "off" else scenario.on
                if side == "on" and scenario.held:
                    cap += base
                await probe.reset()
                wall, cpu, outcome = await probe.reconcile(desired, cap)
                _check(scenario, side, cap, outcome)
                if i > 0:  # the first round warms caches and plans
                    samples[side][0].append(wall)
                    samples[side][1].append(cpu)
    finally:
        await probe.reset()
        await probe.drop_backlog()
    if scenario.drain_after:
        await probe.drain_queue()
    off_wall, off_cpu = (Stats.of(s) for s in samples["off"])
    on_wall, on_cpu = (Stats.of(s) for s in samples["on"])
    return [
        scenario.name,
        f"{off_cpu.median:.2f}",
        f"{on_cpu.median:.2f}",
        f"{on_cpu.median - off_cpu.median:+.2f}",
        f"{on_cpu.median / off_cpu.median:.2f}x",
        f"{off_wall.median:.2f} / {on_wall.median:.2f}",
    ]


async def main_async(args: argparse.Namespace) -> bool:
    """True when every round was checked and the code under test logged no error line."""
    print_header("bench.throttle")
    errors = ServiceErrors()
    name = "quick" if args.quick else "reaction"
    rounds = args.rounds or (4 if args.quick else 15)
    spec = SCALES[name]
    with bench_server() as server:
        print_server(server)
        fleet_db = ensure_fleet(server, name, spec, reuse=args.reuse)
        clone = f"{fleet_db}_t"
        url = server.clone(fleet_db, clone)
        try:
            async with await AsyncConnection.connect(url, autocommit=True) as conn:
                probe = ThrottleProbe(conn, steady_template(spec), spec.versions)
                await probe.setup()
                if not probe.cpu.includes_server:
                    raise RuntimeError("the server's backend is not measurable from here")
                rows = [
                    [
                        "one reconcile of the template",
                        "CPU off ms",
                        "CPU on ms",
                        "added ms",
                        "on/off",
                        "wall off / on ms",
                    ]
                ]
                seeded_queue = await probe.queued_prebuild_jobs()
                with errors.watching():
                    for scenario in scenarios(args.quick, seeded_queue):
                        print(f"-- {scenario.name}: {rounds} rounds per side (+1 warm-up)",
                              flush=True)
                        rows.append(await run_scenario(probe, scenario, rounds))
        finally:
            server.drop(clone)
    print("\n== summary (medians; CPU = client + server backend)")
    print(table(rows))
    print(f"* {errors.summary('the reconciler')}")
    return errors.clean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    common_args(parser)
    parser.add_argument("--rounds", type=int, default=0)
    clean = asyncio.run(main_async(parser.parse_args()))
    raise SystemExit(0 if clean else 1)


if __name__ == "__main__":
    main()
