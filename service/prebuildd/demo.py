"""`prebuildd demo`: the real service, a simulated provisioner and a scripted story.

It runs in its own database (`prebuildd_demo`, recreated each run) so it never touches other
data on the server. The story: two templates fill their pools; midway a new version of one
is promoted (stale pending jobs are canceled and new prebuilds queued within milliseconds,
no sweep involved) and users claim prebuilds of the other (replacements are queued at once).
"""

from __future__ import annotations

import logging
import signal
import statistics
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from uuid import UUID

import anyio
import psycopg
from psycopg import sql
from rich.table import Table

from prebuildd import seed
from prebuildd.claim import claim
from prebuildd.config import Settings, redact_dsn
from prebuildd.http import parse_addr
from prebuildd.migrate import migrate
from prebuildd.model import Plan
from prebuildd.provisioner import ProvisionerConfig, SimulatedProvisioner
from prebuildd.reconciler import Outcome
from prebuildd.service import Service
from prebuildd.sweep import sweep_once

log = logging.getLogger(__name__)

DEMO_DB = "prebuildd_demo"
DEFAULT_NON_LIVE_DURATION = timedelta(seconds=30)


@dataclass
class World:
    """Ids of the seeded rows the story acts on."""

    org: UUID = field(default_factory=uuid.uuid4)
    admin: UUID = field(default_factory=uuid.uuid4)
    users: list[UUID] = field(default_factory=lambda: [uuid.uuid4() for _ in range(3)])
    python_template: UUID = field(default_factory=uuid.uuid4)
    python_v2: UUID = field(default_factory=uuid.uuid4)
    go_template: UUID = field(default_factory=uuid.uuid4)
    go_preset: UUID = field(default_factory=uuid.uuid4)


@dataclass
class Summary:
    reconciles: int = 0
    reaction_ms: list[float] = field(default_factory=list)
    created: int = 0
    deleted: int = 0
    canceled: int = 0
    claimed: int = 0
    promotion_at: float | None = None
    promotion_reaction_ms: float | None = None
    promotion_trigger: str | None = None
    converged: bool = False

    def lines(self) -> list[str]:
        p50 = statistics.median(self.reaction_ms) if self.reaction_ms else 0.0
        p99 = _percentile(self.reaction_ms, 0.99)
        promo = (
            f"{self.promotion_reaction_ms:.1f} ms (trigger: {self.promotion_trigger})"
            if self.promotion_reaction_ms is not None
            else "not observed"
        )
        return [
            f"reconciles:               {self.reconciles}",
            f"event reaction latency:   p50 {p50:.1f} ms, p99 {p99:.1f} ms "
            f"({len(self.reaction_ms)} event-driven reconciles)",
            f"promotion -> actions:     {promo}",
            f"prebuilds created:        {self.created}",
            f"pending jobs canceled:    {self.canceled}",
            f"prebuilds deleted:        {self.deleted}",
            f"prebuilds claimed:        {self.claimed}",
            f"pools converged:          {'yes' if self.converged else 'NO'}",
        ]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ---- seeding -------------------------------------------------------------------------------


def recreate_database(admin_url: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = sql.Identifier(DEMO_DB)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    params = conninfo_to_dict(admin_url)
    params["dbname"] = DEMO_DB
    return make_conninfo("", **params)


def seed_world(conn: psycopg.Connection[tuple[object, ...]], world: World, now: datetime) -> None:
    """Two templates: `python` (a scheduled preset and a plain one), `go` (a preset with a TTL)."""
    seed.organization(
        conn, id=world.org, name="demo", description="prebuildd demo organisation"
    )
    for n, user in enumerate([world.admin, *world.users]):
        name = "admin" if n == 0 else f"user{n}"
        seed.user(conn, id=user, username=name, email=f"{name}@demo.test", name=name)
    _, python_v1 = seed.template(
        conn, organization_id=world.org, created_by=world.admin, name="python",
        display_name="python", version_name="v1", id=world.python_template,
    )
    seed.version(conn, world.python_template, name="v2", id=world.python_v2)
    hour = now.hour
    for version in (python_v1.id, world.python_v2):
        _preset(conn, version, "small", desired=3, ttl=0)
        # Business hours, here: the current and next hour in UTC carry two instances.
        business_hours = (f"* {hour}-{min(hour + 1, 23)} * * *", 2)
        _preset(conn, version, "large", desired=1, ttl=0, schedules=[business_hours])
    _, go_v1 = seed.template(
        conn, organization_id=world.org, created_by=world.admin, name="go", display_name="go",
        version_name="v1", id=world.go_template,
    )
    # A short TTL so the demo shows expiry and replacement.
    _preset(conn, go_v1.id, "default", desired=3, ttl=40, id=world.go_preset)


def _preset(
    conn: psycopg.Connection[tuple[object, ...]],
    version: UUID,
    name: str,
    *,
    desired: int,
    ttl: int,
    schedules: list[tuple[str, int]] | None = None,
    id: UUID | None = None,
) -> None:
    seed.preset(
        conn, version, desired=desired, name=name, ttl=ttl, timezone="UTC",
        parameters={"size": name}, schedules=schedules or (), id=id,
    )


# ---- the story -----------------------------------------------------------------------------


# Where the demo serves /metrics, /healthz, /readyz unless `--metrics-addr` says otherwise: a
# free loopback port, so a demo never collides with a service on 2118.
DEFAULT_METRICS_ADDR = "127.0.0.1:0"


class Demo:
    def __init__(
        self,
        url: str,
        duration: timedelta | None,
        live: bool,
        metrics_addr: str = DEFAULT_METRICS_ADDR,
    ) -> None:
        self.url = url
        self.duration = duration
        self.live = live
        self.world = World()
        self.summary = Summary()
        self.log_lines: deque[str] = deque(maxlen=14)
        settings = Settings(
            sweep_interval=timedelta(hours=1),  # the story must be carried by events alone
            metrics_addr=metrics_addr,
        )
        self.service = Service(settings, url)
        self.service.dispatcher.on_outcome.append(self._on_outcome)
        self.provisioner = SimulatedProvisioner(
            # Few, slow provisioners: jobs queue up, as they do in real deployments.
            url,
            ProvisionerConfig(build_time=0.8, agent_ready_delay=0.3, concurrency=2),
        )

    def _on_outcome(self, outcome: Outcome) -> None:
        s = self.summary
        s.reconciles += 1
        for result in outcome.results:
            s.created += len(result.created)
            s.deleted += len(result.deleted)
            s.canceled += result.canceled
        reaction = None
        if outcome.lag is not None:
            reaction = (outcome.lag + outcome.duration) * 1000
            s.reaction_ms.append(reaction)
        self._note_promotion(outcome, reaction)
        actions = ", ".join(f"{k} x{v}" for k, v in outcome.actions_by_kind().items()) or "no-op"
        latency = f"{reaction:6.1f} ms" if reaction is not None else "     -   "
        self.log_lines.append(
            f"{time.strftime('%H:%M:%S')}  {outcome.cause.trigger:7} {latency}  "
            f"{self._names(outcome.locked)}: {actions}"
        )
        if not self.live:
            print(self.log_lines[-1], flush=True)

    def _note_promotion(self, outcome: Outcome, reaction: float | None) -> None:
        s = self.summary
        if s.promotion_at is None or s.promotion_reaction_ms is not None:
            return
        if self.world.python_template not in outcome.locked or not outcome.results:
            return
        s.promotion_reaction_ms = reaction
        s.promotion_trigger = outcome.cause.trigger

    def _names(self, ids: tuple[UUID, ...]) -> str:
        names = {self.world.python_template: "python", self.world.go_template: "go"}
        return ",".join(names.get(i, str(i)[:8]) for i in ids) or "-"

    async def run(self) -> bool:
        with psycopg.connect(self.url, autocommit=True) as conn:
            seed_world(conn, self.world, datetime.now(UTC))
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_on_signal, tg.cancel_scope)
            await tg.start(partial(self.service.run, handle_signals=False))
            if not self.live and self.metrics_url:
                print(f"metrics: {self.metrics_url}", flush=True)
            tg.start_soon(self.provisioner.run)
            if self.live:
                tg.start_soon(self._live_view)
            await self._story()
            tg.cancel_scope.cancel()
        outcomes = await sweep_once(self.url, self.service.settings.plan, True)
        self.summary.converged = _converged([p for o in outcomes for p in o.plans])
        return self.summary.converged

    async def _story(self) -> None:
        total = (self.duration or timedelta(days=365)).total_seconds()
        start = time.monotonic()
        # Promote while the provisioners are still busy with v1: its queued jobs are stale.
        await anyio.sleep(min(0.1 * total, 3.0))
        await self._say("promoting python v2: stale pending jobs are canceled, new ones queued")
        await anyio.to_thread.run_sync(self._promote)
        await self._wait_converged(min(0.4 * total, 30.0))
        await self._say("two users claim prebuilds of go: replacements are queued at once")
        for user in self.world.users[:2]:
            await anyio.to_thread.run_sync(self._claim, user)
        remaining = total - (time.monotonic() - start)
        if self.duration is None:
            await anyio.sleep_forever()
        await self._wait_converged(max(1.0, remaining - 1.0))
        elapsed = time.monotonic() - start
        if self.duration is not None and elapsed < total:
            await anyio.sleep(total - elapsed)

    async def _say(self, text: str) -> None:
        self.log_lines.append(f"{time.strftime('%H:%M:%S')}  >>> {text}")
        if not self.live:
            print(self.log_lines[-1], flush=True)

    def _promote(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            self.summary.promotion_at = time.time()
            seed.promote(conn, self.world.python_template, self.world.python_v2)

    def _claim(self, user: UUID) -> None:
        with psycopg.connect(self.url) as conn, conn.transaction():
            name = f"ws-{str(user)[:8]}"
            if claim(conn, preset_id=self.world.go_preset, user_id=user, name=name) is not None:
                self.summary.claimed += 1

    @property
    def metrics_url(self) -> str | None:
        """Where Prometheus can scrape the demo's service (None: `--metrics-addr ''`)."""
        port = self.service.http_port
        if port is None:
            return None
        host = parse_addr(self.service.settings.metrics_addr)[0] or "0.0.0.0"
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    async def _wait_converged(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            while not _converged(list(self.service.collector.latest_plans())):
                await anyio.sleep(0.2)

    async def _live_view(self) -> None:
        from rich.console import Group
        from rich.live import Live
        from rich.panel import Panel

        with Live(refresh_per_second=4, screen=False) as live:
            while True:
                table = _preset_table(list(self.service.collector.latest_plans()))
                log_panel = Panel("\n".join(self.log_lines), title="reconciles (trigger, latency)")
                metrics = f"metrics: {self.metrics_url}   " if self.metrics_url else ""
                footer = (
                    f"{metrics}Ctrl-C to stop\n"
                    f"in another terminal: prebuildd status --database-url "
                    f"'{redact_dsn(self.url)}'"
                )
                live.update(Group(table, log_panel, footer))
                await anyio.sleep(0.25)


async def _cancel_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for _ in signals:
            scope.cancel()
            return


def _converged(plans: list[Plan]) -> bool:
    active = [p for p in plans if p.preset.is_active]
    if not active:
        return False
    return all(
        p.state.running - p.state.expired == p.state.desired == p.state.eligible
        and p.state.starting == 0
        for p in active
    )


def _preset_table(plans: list[Plan]) -> Table:

    table = Table(title="prebuildd demo: pools", expand=False)
    for column in (
        "template",
        "version",
        "preset",
        "desired",
        "running",
        "eligible",
        "starting",
        "expired",
        "status",
    ):
        table.add_column(column)
    for p in sorted(plans, key=lambda p: (p.preset.template_name, p.preset.name)):
        if not p.preset.is_active:
            continue
        s = p.state
        table.add_row(
            p.preset.template_name,
            p.preset.template_version_name,
            p.preset.name,
            str(s.desired),
            str(s.running),
            str(s.eligible),
            str(s.starting),
            str(s.expired),
            str(p.preset.prebuild_status),
        )
    return table


def run_demo(
    server_url: str,
    *,
    duration: timedelta | None,
    live: bool,
    metrics_addr: str = DEFAULT_METRICS_ADDR,
) -> bool:
    """Entry point of `prebuildd demo`; returns True when the pools converged."""
    if not live and duration is None:
        duration = DEFAULT_NON_LIVE_DURATION
    if live and not sys.stdout.isatty():
        live = False
    if live:
        # Log lines would tear the live view apart; its own panel narrates the reconciles.
        logging.getLogger().setLevel(logging.ERROR)
    url = recreate_database(server_url)
    migrate(url)
    demo = Demo(url, duration, live, metrics_addr)
    ok = anyio.run(demo.run)
    print("\n".join(["", "summary:", *("  " + line for line in demo.summary.lines())]))
    return ok
