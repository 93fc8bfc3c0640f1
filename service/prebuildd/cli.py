"""Command line: parse, call, print. No decisions live here.

Exit codes: 0 ok, 1 error, 2 usage, 3 `claim` found no eligible prebuild.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio
import psycopg

from prebuildd import __version__
from prebuildd.claim import ClaimError
from prebuildd.config import (
    NOTIFICATION_METHODS,
    ConfigError,
    Settings,
    default_data_dir,
    env_or,
    format_duration,
    notification_delivery,
    parse_bool,
    parse_duration,
    plan_config,
    redact_dsn,
    settings_from,
)
from prebuildd.embedded import EmbeddedPostgres, EmbeddedPostgresError
from prebuildd.model import PlanConfig
from prebuildd.queries import query

if TYPE_CHECKING:
    from prebuildd.demand import PresetDemand
    from prebuildd.reconciler import Outcome

log = logging.getLogger("prebuildd")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NONE_AVAILABLE = 0, 1, 2, 3


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bool(text: str) -> bool:
    try:
        return parse_bool(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _uuid(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UUID") from None


def _option(
    parser: argparse.ArgumentParser,
    flag: str,
    env: str,
    default: str | None,
    help: str,
    **kwargs: Any,
) -> None:
    """A flag whose default comes from `PREBUILDD_<env>`, else `default`.

    Defaults stay strings: argparse converts a string default with the flag's `type`, so a
    bad environment value is reported exactly like a bad flag (usage error, exit 2).
    """
    shown = f"default {default}" if default else "no default"
    parser.add_argument(
        flag,
        default=env_or(os.environ, env, default),
        help=f"{help} (env PREBUILDD_{env}; {shown})",
        **kwargs,
    )


def _common(parser: argparse.ArgumentParser) -> None:
    _option(
        parser,
        "--database-url",
        "DATABASE_URL",
        None,
        "PostgreSQL URL; without it run/demo start the embedded PostgreSQL and other "
        "commands use it if it is running",
    )
    _option(
        parser,
        "--data-dir",
        "DATA_DIR",
        str(default_data_dir()),
        "where the embedded PostgreSQL keeps its data",
        type=Path,
    )
    _option(parser, "--log-level", "LOG_LEVEL", "info", "debug, info, warning, error")
    _option(parser, "--log-format", "LOG_FORMAT", "json", "log lines", choices=("json", "text"))


def _reconcile_knobs(parser: argparse.ArgumentParser) -> None:
    _option(
        parser,
        "--backoff-interval",
        "BACKOFF_INTERVAL",
        "1m",
        "wait per recent failure before creating again",
        type=_duration,
    )
    _option(
        parser,
        "--backoff-lookback",
        "BACKOFF_LOOKBACK",
        "1h",
        "how far back failures count",
        type=_duration,
    )
    _option(
        parser,
        "--failure-hard-limit",
        "FAILURE_HARD_LIMIT",
        "3",
        "consecutive failed builds that stop creates for a preset; 0 disables",
        type=int,
    )
    _option(
        parser,
        "--max-creates-per-cycle",
        "MAX_CREATES_PER_CYCLE",
        str(PlanConfig().max_creates_per_cycle),
        "bound on creates for one preset in one reconcile",
        type=int,
    )
    _option(
        parser,
        "--max-pending-prebuild-jobs",
        "MAX_PENDING_PREBUILD_JOBS",
        str(PlanConfig().max_pending_prebuild_jobs),
        "at most this many prebuild create jobs waiting for a provisioner per organization and "
        "provisioner tag set; further creates wait their turn; 0 = no cap",
        type=int,
    )


def _notification_knobs(parser: argparse.ArgumentParser) -> None:
    """Coder's notification settings, which Coder's database does not show: set them to
    Coder's values so that the hard-limit notice goes out the way Coder's own would."""
    _option(
        parser,
        "--notifications-method",
        "NOTIFICATIONS_METHOD",
        "smtp",
        "Coder's CODER_NOTIFICATIONS_METHOD (smtp, webhook), the method of notifications "
        "whose template names none; 'none' when Coder has neither an SMTP smarthost nor a "
        "webhook endpoint configured",
        choices=NOTIFICATION_METHODS,
    )
    _option(
        parser,
        "--notifications-inbox-enabled",
        "NOTIFICATIONS_INBOX_ENABLED",
        "true",
        "Coder's CODER_NOTIFICATIONS_INBOX_ENABLED: also queue the notice for Coder Inbox",
        type=_bool,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prebuildd",
        description="Keeps pools of prebuilt Coder workspaces warm, driven by PostgreSQL events.",
    )
    parser.add_argument("--version", action="version", version=f"prebuildd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the service until SIGTERM/SIGINT")
    _common(run)
    _reconcile_knobs(run)
    _notification_knobs(run)
    _option(
        run,
        "--sweep-interval",
        "SWEEP_INTERVAL",
        "60s",
        "period of the safety-net full sweep",
        type=_duration,
    )
    _option(
        run,
        "--settle",
        "SETTLE",
        format_duration(Settings().settle),
        "debounce window batching a burst of events",
        type=_duration,
    )
    _option(
        run,
        "--cooldown",
        "COOLDOWN",
        "1s",
        "least time between two reconciles of one template; 0 disables",
        type=_duration,
    )
    _option(
        run,
        "--metrics-addr",
        "METRICS_ADDR",
        "127.0.0.1:2118",
        "host:port of /metrics, /healthz and /readyz; empty disables",
    )
    _option(run, "--pool-size", "POOL_SIZE", "10", "max database connections", type=int)
    _option(
        run,
        "--concurrency",
        "CONCURRENCY",
        "0",
        "parallel reconciles; 0 = half the pool, at least 1",
        type=int,
    )
    run.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not apply migrations at start (they always run on the embedded database)",
    )

    mig = sub.add_parser("migrate", help="create/upgrade the schema and install the triggers")
    _common(mig)
    mig.add_argument("--uninstall", action="store_true", help="remove prebuildd's own objects")
    _option(
        mig,
        "--lock-timeout",
        "LOCK_TIMEOUT",
        "200ms",
        "longest one DDL statement waits for a table lock, i.e. that Coder's statements can "
        "queue behind it, before it gives up and retries",
        type=_duration,
    )
    _option(
        mig,
        "--lock-retry-for",
        "LOCK_RETRY_FOR",
        "60s",
        "how long each step keeps retrying (jittered backoff) before failing with a message",
        type=_duration,
    )

    rec = sub.add_parser("reconcile", help="reconcile every preset once")
    _common(rec)
    _reconcile_knobs(rec)
    _notification_knobs(rec)
    rec.add_argument("--once", action="store_true", help="one full sweep, then exit (default)")
    rec.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")

    st = sub.add_parser("status", help="per-preset table of desired and actual prebuilds")
    _common(st)
    _reconcile_knobs(st)

    cl = sub.add_parser("claim", help="hand an eligible prebuild to a user (exit 3 if none)")
    _common(cl)
    cl.add_argument("--preset", type=_uuid, required=True)
    cl.add_argument("--user", type=_uuid, required=True)
    cl.add_argument("--name", required=True)

    for name, text in (("pause", "stop all reconciliation writes"), ("resume", "resume them")):
        _common(sub.add_parser(name, help=text))

    inv = sub.add_parser("invalidate", help="expire every current prebuild of a preset")
    _common(inv)
    inv.add_argument("--preset", type=_uuid, required=True)

    _autoscale_parser(sub)

    prov = sub.add_parser("provisioner", help="simulated provisioner (dev, demo, tests)")
    _common(prov)
    prov.add_argument("--build-time", type=_duration, default=_duration("1s"))
    prov.add_argument("--failure-rate", type=float, default=0.0)
    prov.add_argument("--agent-ready-delay", type=_duration, default=_duration("500ms"))
    prov.add_argument("--concurrency", type=int, default=4)

    demo = sub.add_parser("demo", help="live demo on the embedded PostgreSQL")
    _common(demo)
    demo.add_argument("--duration", type=_duration, default=None, help="stop after this long")
    demo.add_argument("--no-live", action="store_true", help="plain log output and a summary")
    _option(
        demo,
        "--metrics-addr",
        "METRICS_ADDR",
        "127.0.0.1:0",
        "host:port of the demo's /metrics, /healthz and /readyz (port 0: a free one, printed "
        "at start), e.g. 0.0.0.0:2118 for Prometheus to scrape; empty disables",
    )
    return parser


def _autoscale_parser(sub: Any) -> None:
    """`prebuildd autoscale set|list`: opt-in, demand-driven pool sizing per preset."""
    autoscale = sub.add_parser(
        "autoscale", help="size a preset's pool from its demand (opt-in, per template + name)"
    )
    actions = autoscale.add_subparsers(dest="autoscale_command", required=True, metavar="ACTION")
    set_ = actions.add_parser(
        "set",
        help="store the policy of a preset's (template, preset name); replaces an earlier one",
    )
    _common(set_)
    set_.add_argument(
        "--preset",
        type=_uuid,
        required=True,
        help="a preset id; the policy applies to its template's presets of that name, on "
        "every version (it survives promotions)",
    )
    set_.add_argument(
        "--mode",
        required=True,
        choices=("off", "forecast", "auto"),
        help="off: the template's count only; forecast: report the suggested size; "
        "auto: aim for it (never below the template's count, never above --max)",
    )
    set_.add_argument("--min", type=int, default=0, help="least pool size (default 0)")
    set_.add_argument(
        "--max", type=int, default=None, help="largest pool size (required unless --mode off)"
    )
    set_.add_argument("--json", action="store_true", help="print the stored policy as JSON")
    list_ = actions.add_parser("list", help="every autoscale policy")
    _common(list_)
    list_.add_argument("--json", action="store_true", help="a JSON array, for scripts")


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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from prebuildd.logs import setup_logging

    try:
        setup_logging(args.log_level, args.log_format)
    except ValueError as exc:
        print(f"prebuildd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    handler = _COMMANDS[args.command]
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"prebuildd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ClaimError as exc:
        print(f"prebuildd: claim refused: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (psycopg.Error, EmbeddedPostgresError, OSError) as exc:
        print(f"prebuildd: {redact_dsn(str(exc)).strip()}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


# ---- commands ----------------------------------------------------------------------------


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
        outcomes = anyio.run(
            partial(sweep_once, url, config, args.dry_run, notifications=notifications)
        )
    print_plans(outcomes, sys.stdout, dry_run=args.dry_run)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from prebuildd.report import print_status

    with database(args, start_embedded=False) as url:
        outcomes, demand = anyio.run(_status, url, plan_config(args))
    print_status(outcomes, sys.stdout, demand)
    return EXIT_OK


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


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
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


if __name__ == "__main__":
    raise SystemExit(main())
