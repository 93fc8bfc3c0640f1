"""One handler per command: parsed arguments in, exit code out. No decisions live here.

Each handler resolves its database (`database`), calls the module that does the work and
prints the result; `COMMANDS` maps command names to handlers (prebuildd.cli dispatches).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import anyio
import psycopg

from prebuildd import __version__
from prebuildd.config import (
    ConfigError,
    notification_delivery,
    plan_config,
    redact_dsn,
    settings_from,
)
from prebuildd.embedded import EmbeddedPostgres
from prebuildd.model import PlanConfig
from prebuildd.queries import query

T = TypeVar("T")

if TYPE_CHECKING:
    from prebuildd.demand import PresetDemand
    from prebuildd.reconciler import Outcome

log = logging.getLogger("prebuildd")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NONE_AVAILABLE = 0, 1, 2, 3


@contextlib.contextmanager
def database(args: argparse.Namespace, *, start_embedded: bool) -> Iterator[str]:
    """The URL to use: --database-url, else the embedded server (started if allowed)."""
    if args.database_url:
        yield args.database_url
        return
    server = EmbeddedPostgres(args.data_dir / "pgdata")
    if not start_embedded and not (args.data_dir / "pgdata" / "postmaster.pid").exists():
        raise ConfigError(
            "no --database-url (or PREBUILDD_DATABASE_URL) given and no embedded PostgreSQL "
            f"is running in {args.data_dir}; start one with `prebuildd run` or `prebuildd demo`"
        )
    with server:
        yield server.url


def cmd_run(args: argparse.Namespace) -> int:
    from prebuildd.migrate import migrate
    from prebuildd.service import Service
    from prebuildd.telemetry import setup_tracing

    settings = settings_from(args)
    tracing = setup_tracing(service_version=__version__)
    try:
        with database(args, start_embedded=True) as url:
            if not args.database_url or not args.no_migrate:
                migrate(url)
            log.info("starting", extra={"database": redact_dsn(url)})
            anyio.run(Service(settings, url).run)
    finally:
        tracing.shutdown()
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    from prebuildd.migrate import LockPolicy, MigrationError, migrate, uninstall

    try:
        policy = LockPolicy(timeout=args.lock_timeout, retry_for=args.lock_retry_for)
    except ValueError as exc:
        raise ConfigError(f"--lock-timeout/--lock-retry-for: {exc}") from None
    try:
        with database(args, start_embedded=True) as url:
            if args.uninstall:
                for line in uninstall(url, lock_policy=policy):
                    print(line)
            else:
                report = migrate(url, lock_policy=policy)
                print(report)
    except MigrationError as exc:
        print(f"prebuildd: migrate: {redact_dsn(str(exc)).strip()}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def cmd_reconcile(args: argparse.Namespace) -> int:
    from prebuildd.report import print_plans
    from prebuildd.sweep import sweep_once

    config, notifications = plan_config(args), notification_delivery(args)
    with database(args, start_embedded=False) as url:
        outcomes = run_keeping(
            partial(sweep_once, url, config, args.dry_run, notifications=notifications)
        )
    print_plans(outcomes, sys.stdout, dry_run=args.dry_run)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from prebuildd.report import print_status

    with database(args, start_embedded=False) as url:
        outcomes, demand = run_keeping(partial(_status, url, plan_config(args)))
    print_status(outcomes, sys.stdout, demand)
    return EXIT_OK


def run_keeping(main: Callable[[], Awaitable[T]]) -> T:
    """`anyio.run(main)`, handing the result over outside the event loop.

    On Python 3.11 the asyncio runner builds the repr of its finished main task as it exits
    (its SIGINT handler holds the task; signal.getsignal() tries that handler as an enum
    value, and the failed lookup's error message is the handler's repr), and a task's repr
    includes its result: the dataclass reprs of a whole sweep's outcomes, ~90 ms of CPU per
    call on a 15,000-preset fleet, for nothing. Kept in a list instead, the task's result is
    None.
    """
    kept: list[T] = []

    async def keep() -> None:
        kept.append(await main())

    anyio.run(keep)
    return kept[0]


async def _status(
    url: str, config: PlanConfig
) -> tuple[list[Outcome], dict[UUID, PresetDemand]]:
    """A dry sweep (the plans, with suggested sizes), then every shown preset's hits and
    misses of the 24 hours before the sweep's database time."""
    from prebuildd import store
    from prebuildd.sweep import sweep_once

    outcomes = await sweep_once(url, config, True)
    templates = sorted({p.preset.template_id for o in outcomes for p in o.plans})
    read_at = [o.now for o in outcomes if o.now is not None]
    if not templates or not read_at:
        return outcomes, {}
    now = max(read_at)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        demand = await store.read_recent_demand(
            conn, templates, since=now - timedelta(hours=24), until=now
        )
    return outcomes, demand


def cmd_claim(args: argparse.Namespace) -> int:
    from prebuildd.claim import claim

    with (
        database(args, start_embedded=False) as url,
        psycopg.connect(url) as conn,
        conn.transaction(),
    ):
        claimed = claim(conn, preset_id=args.preset, user_id=args.user, name=args.name)
    if claimed is None:
        print("no eligible prebuild available for this preset", file=sys.stderr)
        return EXIT_NONE_AVAILABLE
    print(claimed.workspace_id)
    return EXIT_OK


def _set_paused(paused: bool) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        with database(args, start_embedded=False) as url, psycopg.connect(url) as conn:
            conn.execute(query("set_reconciliation_paused"), {"paused": paused})
        print("reconciliation paused" if paused else "reconciliation resumed")
        return EXIT_OK

    return command


def cmd_invalidate(args: argparse.Namespace) -> int:
    with database(args, start_embedded=False) as url, psycopg.connect(url) as conn:
        row = conn.execute(query("invalidate_preset"), {"preset_id": args.preset}).fetchone()
    if row is None:
        print(f"no preset {args.preset}", file=sys.stderr)
        return EXIT_ERROR
    print(f"preset {args.preset} invalidated: its current prebuilds will be replaced")
    return EXIT_OK


def cmd_autoscale(args: argparse.Namespace) -> int:
    from prebuildd.autoscale import PolicyError, check_bounds

    if args.autoscale_command == "list":
        with database(args, start_embedded=False) as url, psycopg.connect(url) as conn:
            policies = _policies(conn)
        _print_policies(policies, args.json)
        return EXIT_OK
    # `set`: every check that needs no database first; nothing is written when one fails.
    maximum = args.max
    if maximum is None:
        if args.mode != "off":
            message = f"--max is required with --mode {args.mode}"
            print(f"prebuildd: autoscale set: {message}", file=sys.stderr)
            return EXIT_USAGE
        maximum = max(args.min, 0)
    try:
        check_bounds(args.min, maximum)
    except PolicyError as exc:
        print(f"prebuildd: autoscale set: {exc}", file=sys.stderr)
        return EXIT_USAGE
    params = {
        "preset_id": args.preset,
        "mode": args.mode,
        "min_instances": args.min,
        "max_instances": maximum,
    }
    with database(args, start_embedded=False) as url, psycopg.connect(url) as conn:
        try:
            row = conn.execute(query("autoscale_set"), params).fetchone()
        except psycopg.errors.InvalidParameterValue as exc:
            # The function's checks: unknown preset, no desired_instances (and, redundantly,
            # the bounds and the mode). The transaction is rolled back: nothing was stored.
            conn.rollback()
            message = exc.diag.message_primary or str(exc)
            hint = f" ({exc.diag.message_hint})" if exc.diag.message_hint else ""
            print(f"prebuildd: autoscale set: {message}{hint}", file=sys.stderr)
            return EXIT_USAGE
        conn.commit()
        if row is None:  # the function returns its key or raises
            raise psycopg.DataError("set_autoscale_policy returned nothing")
        key = (str(row[0]), row[1])
        stored = [p for p in _policies(conn) if (p["template_id"], p["preset_name"]) == key]
    _print_policies(stored, args.json, single=True)
    return EXIT_OK


# `autoscale list` columns, as the JSON output names them.
_POLICY_FIELDS = (
    "template_id",
    "template_name",
    "preset_name",
    "active_preset_id",
    "desired_instances",
    "mode",
    "min",
    "max",
    "updated_at",
    "template_gone",
)


def _policies(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every policy (autoscale_list), JSON-ready: ids and times as strings."""
    policies = []
    for row in conn.execute(query("autoscale_list")).fetchall():
        policy = dict(zip(_POLICY_FIELDS, row, strict=True))
        for key in ("template_id", "active_preset_id"):
            policy[key] = None if policy[key] is None else str(policy[key])
        policy["updated_at"] = policy["updated_at"].isoformat()
        policies.append(policy)
    return policies


def _print_policies(
    policies: list[dict[str, Any]], as_json: bool, *, single: bool = False
) -> None:
    if as_json:
        print(json.dumps(policies[0] if single and policies else policies, indent=2))
        return
    if not policies:
        print("no autoscale policies")
        return
    header = ("TEMPLATE", "PRESET", "MODE", "MIN", "MAX", "CONFIGURED", "ACTIVE_PRESET_ID")
    rows = [header]
    for p in policies:
        configured = p["desired_instances"]
        rows.append(
            (
                "(deleted)" if p["template_gone"] else p["template_name"],
                p["preset_name"],
                p["mode"],
                str(p["min"]),
                str(p["max"]),
                "-" if configured is None else str(configured),
                p["active_preset_id"] or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


def cmd_provisioner(args: argparse.Namespace) -> int:
    from prebuildd.provisioner import ProvisionerConfig, SimulatedProvisioner

    config = ProvisionerConfig(
        build_time=args.build_time.total_seconds(),
        failure_rate=args.failure_rate,
        agent_ready_delay=args.agent_ready_delay.total_seconds(),
        concurrency=args.concurrency,
    )
    with database(args, start_embedded=False) as url:
        anyio.run(SimulatedProvisioner(url, config).run)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from prebuildd.demo import run_demo
    from prebuildd.http import parse_addr

    if args.metrics_addr:
        try:
            parse_addr(args.metrics_addr)  # before the demo recreates its database
        except ValueError as exc:
            raise ConfigError(f"--metrics-addr: {exc}") from None
    with database(args, start_embedded=True) as url:
        ok = run_demo(
            url, duration=args.duration, live=not args.no_live, metrics_addr=args.metrics_addr or ""
        )
    return EXIT_OK if ok else EXIT_ERROR


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "migrate": cmd_migrate,
    "reconcile": cmd_reconcile,
    "status": cmd_status,
    "claim": cmd_claim,
    "pause": _set_paused(True),
    "resume": _set_paused(False),
    "invalidate": cmd_invalidate,
    "autoscale": cmd_autoscale,
    "provisioner": cmd_provisioner,
    "demo": cmd_demo,
}
