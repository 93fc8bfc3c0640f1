"""A promotion sent into a frozen LISTEN connection: how long until it is reconciled?

Issue 10 item 12. The listener's backend is stopped (SIGSTOP, found through pg_stat_activity):
its socket stays open and answers nothing, as a frozen server, a stuck backend or a silently
dropped NAT entry looks to a client. A promotion committed right after the freeze sends its
notification into that backend, so the service only acts once its listener has noticed the
silence, reconnected, and swept. Per round, measured on this process's monotonic clock: from
the promotion's COMMIT to the moment the database shows it reconciled (the old version's
create canceled, the new version's queued), polled every 5 ms.

The real service runs in this process (prebuildd.service.Service) on its own database, with
the production liveness settings, side by side in the same run with the settings before
the fix (a probe every 5 s, 2 s to answer) on another database, round for round interleaved.
Target: every round under 3 s with the production settings (MET / MISSED, exit 1 when
missed, and when a round never got reconciled).

    PYTHONPATH=service python -m bench.frozen_listener [--rounds 8] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import anyio
import psycopg

from bench._common import ServiceErrors, Stats, common_args, print_header, table, verdict
from bench._server import BenchServer, bench_server, print_server
from bench._sql import bench_query
from prebuildd.config import Settings
from prebuildd.migrate import migrate
from prebuildd.queries import query
from prebuildd.service import Service

TARGET_SECONDS = 3.0
# A round that takes longer than this did not recover at all.
GIVE_UP_SECONDS = 30.0
DB_PREFIX = "prebuildd_bench_frozen"


@dataclass
class Variant:
    name: str
    settings: Settings
    url: str = ""
    seconds: list[float] = field(default_factory=list)
    lost: int = 0


def variants(server: BenchServer) -> list[Variant]:
    base = Settings(
        sweep_interval=timedelta(hours=1),  # only the reconnect sweep may find the promotion
        metrics_addr="",
        pool_min_size=1,
        pool_max_size=4,
    )
    before = replace(
        base, liveness_interval=timedelta(seconds=5), liveness_timeout=timedelta(seconds=2)
    )
    return [
        Variant(
            f"production (probe after {_s(base.liveness_interval)} of silence, "
            f"{_s(base.liveness_timeout)} to answer)",
            base,
        ),
        Variant(
            f"before the fix (probe every {_s(before.liveness_interval)}, "
            f"{_s(before.liveness_timeout)} to answer)",
            before,
        ),
    ]


def _s(value: timedelta) -> str:
    return f"{value.total_seconds():g} s"


# ---------------------------------------------------------------------------------------------
# Rows of one round: a template whose active v1 has a preset (desired 1) and an inactive v2
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    template: uuid.UUID
    v2: uuid.UUID
    old: uuid.UUID
    new: uuid.UUID


def seed_world(url: str) -> tuple[uuid.UUID, uuid.UUID]:
    org, admin = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query("demo_seed_org"), {"org_id": org, "name": "bench"})
        conn.execute(
            query("demo_seed_user"),
            {"user_id": admin, "username": "admin", "email": "admin@bench.test"},
        )
    return org, admin


def seed_round(url: str, org: uuid.UUID, admin: uuid.UUID, n: int) -> Round:
    tpl, v1, v2, old, new = (uuid.uuid4() for _ in range(5))
    base = {"org_id": org, "user_id": admin, "template_id": tpl}
    with psycopg.connect(url) as conn:
        conn.execute(
            query("demo_seed_template"),
            {**base, "version_id": v1, "version_name": "v1", "name": f"frozen-{n}"},
        )
        conn.execute(query("demo_add_version"), {**base, "version_id": v2, "version_name": "v2"})
        for preset, version in ((old, v1), (new, v2)):
            conn.execute(
                query("demo_add_preset"),
                {
                    "preset_id": preset,
                    "version_id": version,
                    "name": "dev",
                    "desired": 1,
                    "ttl": 0,
                    "timezone": "UTC",
                },
            )
        conn.commit()
    return Round(tpl, v2, old, new)


def _scalar(url: str, name: str, params: dict[str, Any] | None = None) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(bench_query(name), params).fetchone()
    return None if row is None else row


# ---------------------------------------------------------------------------------------------
# One round
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def frozen(pid: int) -> Any:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def _until(check: Any, timeout: float, interval: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await anyio.to_thread.run_sync(check):
            return True
        await anyio.sleep(interval)
    return False


async def one_round(variant: Variant, service: Service, org: uuid.UUID, admin: uuid.UUID) -> None:
    url = variant.url
    r = seed_round(url, org, admin, len(variant.seconds) + variant.lost)
    # The template's insert is announced: its v1 create follows; then wait for quiet (nothing
    # queued), so only the sweep can find what comes. (The create is the service's own write:
    # no event echoes it back since prebuildd.execute_actions.)
    def created() -> bool:
        return bool(_scalar(url, "frozen_listener_pending", {"preset": r.old})[0] == 1)

    def quiet() -> bool:
        return service.queue.depth() == 0 == service.queue.processing()

    if not await _until(created, 20):
        raise RuntimeError("the round's first create never came")
    await anyio.sleep(0.3)  # anything the create could still cause is queued by now
    if not await _until(quiet, 20):
        raise RuntimeError("the queue never went quiet")
    pids = [row[0] for row in _rows(url, "frozen_listener_pids")]
    if len(pids) != 1:
        raise RuntimeError(f"expected one listener session, found {pids}")
    with frozen(pids[0]):
        with psycopg.connect(url) as conn:
            conn.execute(query("demo_promote"), {"template_id": r.template, "version_id": r.v2})
            conn.commit()
        committed = time.monotonic()

        def reconciled() -> bool:
            row = _scalar(url, "frozen_listener_reconciled", {"old": r.old, "new": r.new})
            return bool(row and row[0] == 1 and row[1] == 1)

        ok = await _until(reconciled, GIVE_UP_SECONDS)
        took = time.monotonic() - committed
    if ok:
        variant.seconds.append(took)
    else:
        variant.lost += 1
    # A new listener session before the next round (the old backend exits once resumed).
    await _until(lambda: len(_rows(url, "frozen_listener_pids")) == 1, 20, 0.05)


def _rows(url: str, name: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(bench_query(name)).fetchall()


@contextlib.asynccontextmanager
async def running(service: Service) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        await tg.start(_run, service)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


async def _run(service: Service, *, task_status: Any) -> None:
    await service.run(handle_signals=False, task_status=task_status)


async def measure(server: BenchServer, rounds: int) -> list[Variant]:
    chosen = variants(server)
    worlds = []
    for n, variant in enumerate(chosen):
        name = f"{DB_PREFIX}_{n}"
        server.drop(name)
        server.create(name)
        variant.url = server.url(name)
        migrate(variant.url)
        worlds.append(seed_world(variant.url))
    services = [Service(v.settings, v.url) for v in chosen]
    async with contextlib.AsyncExitStack() as stack:
        for service in services:
            await stack.enter_async_context(running(service))
        for n in range(rounds):
            for variant, service, (org, admin) in zip(chosen, services, worlds, strict=True):
                await one_round(variant, service, org, admin)
            print(f"round {n + 1}/{rounds}: " + ", ".join(
                f"{v.seconds[-1]:.2f} s" if v.seconds else "lost" for v in chosen
            ), flush=True)
    for n in range(len(chosen)):
        server.drop(f"{DB_PREFIX}_{n}")
    return chosen


def report(chosen: list[Variant]) -> bool:
    rows = [["settings", "rounds", "median", "p90", "max", "lost"]]
    for v in chosen:
        if v.seconds:
            s = Stats.of(v.seconds)
            rows.append(
                [
                    v.name,
                    str(s.n),
                    f"{s.median / 1000:.2f} s",
                    f"{s.p90 / 1000:.2f} s",
                    f"{s.maximum / 1000:.2f} s",
                    str(v.lost),
                ]
            )
        else:
            rows.append([v.name, "0", "-", "-", "-", str(v.lost)])
    print()
    print("promotion COMMIT -> reconciled, the listener's backend frozen (SIGSTOP):")
    print(table(rows))
    production, before = chosen
    if not production.seconds:
        print(f"verdict: {verdict(False)}: nothing was measured")
        return False
    if before.seconds:
        ratio = Stats.of(before.seconds).median / Stats.of(production.seconds).median
        print(f"median before / production: {ratio:.1f}x")
    worst = max(production.seconds)
    met = production.lost == 0 and worst < TARGET_SECONDS
    print(
        f"verdict: {verdict(met)}: every round under {TARGET_SECONDS:g} s "
        f"(worst {worst:.2f} s, {production.lost} lost)"
    )
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    common_args(parser)
    parser.add_argument("--rounds", type=int, default=8, help="freezes per variant")
    args = parser.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    if rounds < 1:
        parser.error("--rounds must be >= 1")
    print_header("frozen listener: promotion -> reconcile across a frozen LISTEN backend")
    with bench_server() as server, ServiceErrors().watching() as errors:
        print_server(server)
        if server.kind == "given":
            print("verdict: MISSED: the listener's backend must be a process of this machine")
            return 1
        chosen = anyio.run(measure, server, rounds)
    met = report(chosen)
    # A round that "recovered" while the service logged errors is not a recovery.
    print(errors.summary())
    return 0 if errors.verdict(met) else 1


if __name__ == "__main__":
    sys.exit(main())
