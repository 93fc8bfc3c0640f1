"""The cap on pending prebuild jobs with three `prebuildd run` replicas and a simulated
provisioner: desired 0 -> 200 converges while, sampled continuously, no organization's tag set
ever has more than the cap's prebuild create jobs waiting for a provisioner; a small pool that
asks at the same time is full long before the big one; the pools never overfill.
"""

from __future__ import annotations

import time
from collections import defaultdict
from uuid import UUID

import psycopg
import pytest
from _db import assert_integrity, read_pools
from _invariants import InvariantChecker
from _procs import Proc, Processes, scrape

from factories import make_org, make_preset, make_template

pytestmark = pytest.mark.slow

CAP = 5
REPLICAS = 3
BIG, SMALL, ELSEWHERE = 200, 10, 20

# Prebuild create jobs that no provisioner has picked up, per organization and tag set.
PENDING: str = """
SELECT j.organization_id, j.tags::text, count(*)
FROM provisioner_jobs j JOIN workspace_builds b ON b.job_id = j.id
WHERE j.job_status = 'pending' AND j.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'
  AND j.type = 'workspace_build' AND b.transition = 'start'
GROUP BY 1, 2
"""


@pytest.mark.timeout(300)
def test_three_replicas_keep_pending_prebuild_jobs_under_the_cap_while_pools_fill(
    db_url: str,
) -> None:
    with psycopg.connect(db_url) as conn:
        acme, other_org = make_org(conn, name="acme"), make_org(conn, name="other")
        presets = {
            "big": make_preset(conn, make_template(conn, acme, name="big").version_id, desired=0),
            "small": make_preset(
                conn, make_template(conn, acme, name="small").version_id, desired=0
            ),
            "elsewhere": make_preset(
                conn, make_template(conn, other_org, name="elsewhere").version_id, desired=0
            ),
        }
        conn.commit()
    wanted = {"big": BIG, "small": SMALL, "elsewhere": ELSEWHERE}
    checker = InvariantChecker(window=10.0)
    most: dict[tuple[UUID, str], int] = defaultdict(int)
    samples = 0

    with Processes(db_url) as procs, psycopg.connect(db_url, autocommit=True) as sampler:

        def sample() -> dict[str, int]:
            """One look: the cap, the invariants of the churn drill, and the pools."""
            nonlocal samples
            samples += 1
            for org, tags, pending in sampler.execute(PENDING).fetchall():
                most[(org, tags)] = max(most[(org, tags)], pending)
                assert pending <= CAP, (
                    f"{pending} pending prebuild create jobs for {org} {tags} > cap {CAP}\n"
                    + procs.dump()
                )
            pools = read_pools(sampler)
            violations = checker.observe(time.monotonic(), pools)
            assert not violations, "\n".join(violations) + "\n" + procs.dump()
            return {name: pools[p].live for name, p in presets.items()}

        replicas = [
            procs.service(
                "--max-pending-prebuild-jobs", str(CAP), "--cooldown", "200ms",
                name=f"replica-{n}",
            )
            for n in range(REPLICAS)
        ]
        procs.provisioner("--concurrency", "4", build_time="100ms", agent_ready_delay="20ms")
        for replica in replicas:
            replica.wait_listening()
        sample()
        with psycopg.connect(db_url) as conn:
            for name, preset in presets.items():
                conn.execute(
                    "UPDATE template_version_presets SET desired_instances = %s WHERE id = %s",
                    (wanted[name], preset),
                )
            conn.commit()

        big_when_small_full: int | None = None
        deadline = time.monotonic() + 200
        while True:
            live = sample()
            if big_when_small_full is None and live["small"] >= SMALL:
                big_when_small_full = live["big"]
            if live == wanted and _all_built(sampler):
                break
            assert time.monotonic() < deadline, f"pools still filling: {live}\n{procs.dump()}"
            time.sleep(0.02)
        turns = sum(_throttle_turns(r) for r in replicas)
        acted = [r.name for r in replicas if any(x.get("actions") for x in r.records("reconciled"))]

    print(
        f"{samples} samples; most pending per tag set: {sorted(most.values())}; big had "
        f"{big_when_small_full} live when small was full; {turns} throttle_turn events; "
        f"replicas that wrote: {acted}"
    )
    # The cap was reached (the test would prove nothing otherwise), in both organizations.
    assert sorted(most.values()) == [CAP, CAP]
    assert big_when_small_full is not None and big_when_small_full <= BIG // 2
    assert turns > 0, "pickups must wake the lines"
    assert len(acted) >= 2, "the work was never shared between replicas"
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM prebuildd.throttle_waits").fetchone() == (0,)
    assert_integrity(db_url)


def _all_built(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    """Every prebuild job done (none pending or running): the pools are built, not queued."""
    row = conn.execute(
        "SELECT count(*) FROM provisioner_jobs WHERE job_status IN ('pending', 'running')"
    ).fetchone()
    return row == (0,)


def _throttle_turns(replica: Proc) -> float:
    try:
        return scrape(replica.metrics_port()).total(
            "prebuildd_events_received_total", kind="throttle_turn"
        )
    except (OSError, AssertionError):
        return 0.0
