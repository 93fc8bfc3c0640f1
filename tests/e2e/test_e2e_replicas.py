"""Three `prebuildd run` replicas and one simulated provisioner on one database, under churn:
promotions, claims, desired changes, and kill -9 / restart of a replica every few seconds.
The pools are sampled about every 100 ms and checked against the invariants of
`_invariants.py` (never overfilled, no deficit filled twice); at the end they must converge.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from uuid import UUID

import psycopg
import pytest
from _db import assert_integrity, read_pools
from _invariants import InvariantChecker
from _procs import Proc, Processes

from factories import make_org, make_preset, make_template, make_user, make_version, promote
from prebuildd.claim import ClaimError, claim

pytestmark = pytest.mark.slow

CHURN_SECONDS = 40.0
# After the churn, every pool must reach its target within this (generous: a loaded 2-core
# machine runs three replicas, a provisioner and PostgreSQL here).
CONVERGE_SECONDS = 180.0
SAMPLE_EVERY = 0.1
REPLICAS = 3
WINDOW = 10.0
PRESET_NAMES = ("small", "large")


@dataclass
class World:
    """The seeded templates and which presets are active now (the churn keeps it current)."""

    user: UUID
    active: dict[UUID, dict[str, UUID]] = field(default_factory=dict)

    def active_presets(self) -> list[UUID]:
        return [p for per in self.active.values() for p in per.values()]


def _seed(url: str) -> World:
    with psycopg.connect(url) as conn:
        org = make_org(conn)
        world = World(user=make_user(conn))
        for n in range(3):
            tpl = make_template(conn, org, name=f"churn-{n}")
            world.active[tpl.id] = {
                name: make_preset(conn, tpl.version_id, name=name, desired=d)
                for name, d in zip(PRESET_NAMES, (2, 1), strict=True)
            }
        conn.commit()
    return world


class Churn:
    """The random changes, each committed on its own connection."""

    def __init__(self, url: str, world: World, rng: random.Random) -> None:
        self.url = url
        self.world = world
        self.rng = rng
        self.stats: Counter[str] = Counter()

    def change_desired(self) -> None:
        preset = self.rng.choice(self.world.active_presets())
        with psycopg.connect(self.url) as conn:
            conn.execute(
                "UPDATE template_version_presets SET desired_instances = %s WHERE id = %s",
                (self.rng.randint(0, 4), preset),
            )
        self.stats["desired changes"] += 1

    def claim(self) -> None:
        preset = self.rng.choice(self.world.active_presets())
        name = f"c{self.stats['claim attempts']}"
        self.stats["claim attempts"] += 1
        try:
            with psycopg.connect(self.url) as conn, conn.transaction():
                got = claim(conn, preset_id=preset, user_id=self.world.user, name=name)
        except (ClaimError, psycopg.Error):
            self.stats["claims refused"] += 1
            return
        self.stats["claims" if got else "claims: none eligible"] += 1

    def promote(self) -> None:
        """A new version with the same preset names (new ids, new desired) becomes active."""
        template = self.rng.choice(list(self.world.active))
        with psycopg.connect(self.url) as conn:
            version = make_version(conn, template, active=False)
            presets = {
                name: make_preset(conn, version, name=name, desired=self.rng.randint(1, 3))
                for name in PRESET_NAMES
            }
            promote(conn, template, version)
            conn.commit()
        self.world.active[template] = presets
        self.stats["promotions"] += 1


# The churn alone lasts CHURN_SECONDS: the suite's 120 s per-test default would leave the
# convergence too little room on a loaded machine.
@pytest.mark.timeout(CHURN_SECONDS + CONVERGE_SECONDS + 180)
def test_three_replicas_under_churn_never_overfill_nor_fill_a_deficit_twice(db_url: str) -> None:
    seed = int(os.environ.get("PREBUILDD_E2E_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    world = _seed(db_url)
    churn = Churn(db_url, world, rng)
    checker = InvariantChecker(window=WINDOW)
    with Processes(db_url) as procs, psycopg.connect(db_url, autocommit=True) as sampler:

        def check() -> dict[UUID, int]:
            pools = read_pools(sampler)
            violations = checker.observe(time.monotonic(), pools)
            assert not violations, f"seed {seed}: " + "\n".join(violations) + "\n" + procs.dump()
            return {p: pool.live - pool.target for p, pool in pools.items()}

        replicas = [procs.service(name=f"replica-{n}") for n in range(REPLICAS)]
        procs.provisioner()
        for replica in replicas:
            replica.wait_listening()
        _churn(churn, replicas, procs, check)
        for replica in replicas:
            assert replica.alive, replica.tail()
        settled = _converge(check, timeout=CONVERGE_SECONDS)
        started = [p for p in procs.started if p.name.startswith("replica")]
        acted = [p.name for p in started if _acted(p)]
    print(
        f"seed {seed}: {dict(churn.stats)}; {len(started)} replica processes, "
        f"{len(started) - REPLICAS} killed; {len(acted)} of them wrote; "
        f"{checker.samples} samples; converged {settled:.1f}s after the churn"
    )
    assert churn.stats["claims"] >= 1 and churn.stats["promotions"] >= 1
    assert len(acted) >= 2, "the work was never shared between replicas"
    assert_integrity(db_url)


def _acted(replica: Proc) -> bool:
    return any(r.get("actions") for r in replica.records("reconciled"))


Check = Callable[[], dict[UUID, int]]


def _churn(churn: Churn, replicas: list[Proc], procs: Processes, check: Check) -> None:
    rng = churn.rng
    start = time.monotonic()
    next_change, next_promotion, next_kill = start + 0.5, start + 4.0, start + 3.0
    kills = 0
    while (now := time.monotonic()) < start + CHURN_SECONDS:
        if now >= next_kill:
            n = rng.randrange(len(replicas))
            replicas[n].kill()
            kills += 1
            replicas[n] = procs.service(name=f"replica-{n}-r{kills}")
            next_kill = now + rng.uniform(3.0, 6.0)
        if now >= next_promotion:
            churn.promote()
            check()
            next_promotion = now + rng.uniform(5.0, 8.0)
        if now >= next_change:
            rng.choice((churn.change_desired, churn.claim, churn.claim))()
            check()
            next_change = now + rng.uniform(0.2, 0.6)
        check()
        time.sleep(max(0.0, SAMPLE_EVERY - (time.monotonic() - now)))


def _converge(check: Check, *, timeout: float) -> float:
    """Keep checking until every pool holds exactly its target; seconds it took."""
    start = time.monotonic()
    while True:
        off = {p: d for p, d in check().items() if d}
        if not off:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"pools still off target: {off}"
        time.sleep(SAMPLE_EVERY)
