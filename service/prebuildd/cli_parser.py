"""The command line's grammar: every command, its flags, their environment variables and defaults.

Parsing only: a bad flag or environment value is a usage error here (argparse, exit 2), before
any command runs (prebuildd.cli_commands).
"""

from __future__ import annotations

import argparse
import os
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from prebuildd import __version__
from prebuildd.config import (
    NOTIFICATION_METHODS,
    ConfigError,
    Settings,
    default_data_dir,
    env_or,
    format_duration,
    parse_bool,
    parse_duration,
)
from prebuildd.model import PlanConfig


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
