"""Settings shared by every command: durations, DSN redaction, and the service's knobs.

Flags win over `PREBUILDD_*` environment variables, which win over the defaults below (the
defaults marked Coder are Coder's own, so operators feel at home).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

from prebuildd.model import PlanConfig
from prebuildd.queue.settle import DEFAULT_SETTLE_SECONDS

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the setting and the bad value."""


def parse_duration(text: str) -> timedelta:
    """`500ms`, `15s`, `1m`, `1h30m`, `2d`; a bare number means seconds. Negative is invalid."""
    raw = text.strip().lower()
    if not raw:
        raise ConfigError("empty duration")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = _parse_compound(raw, text)
    if seconds < 0:
        raise ConfigError(f"duration {text!r} is negative")
    return timedelta(seconds=seconds)


def _parse_compound(raw: str, original: str) -> float:
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(raw):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(raw) or pos == 0:
        raise ConfigError(f"invalid duration {original!r} (use e.g. 500ms, 15s, 1m, 1h)")
    return total


def format_duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    if seconds and seconds < 1:
        return f"{round(seconds * 1000)}ms"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# URL form: scheme://user:password@host... -> keep the user, hide the password.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s]*):(?P<pw>[^@\s]*)@", re.I)
# key=value form (libpq conninfo): password=secret or password='sec ret'.
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|[^\s]+)", re.I)
# Query-string form: ...?password=secret&...
_QS_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<pw>[^&\s]*)", re.I)


def redact_dsn(text: str) -> str:
    """Hide every database password in `text` (URLs, conninfo strings, query strings)."""
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:***@", text)
    text = _QS_PASSWORD.sub(lambda m: f"{m.group('head')}***", text)
    return _KV_PASSWORD.sub(lambda m: f"{m.group('head')}***", text)


def default_data_dir() -> Path:
    """Where the embedded PostgreSQL keeps its data: outside /root, as the server user needs
    to traverse every parent directory and /root is closed to other users."""
    if os.geteuid() == 0:
        return Path("/var/lib/prebuildd")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "prebuildd"


@dataclass(frozen=True, slots=True)
class NotificationDelivery:
    """What Coder's notification enqueuer decides from its own configuration, which the
    database does not show; prebuildd mirrors it (`--notifications-method`,
    `--notifications-inbox-enabled`). Defaults are Coder's."""

    # The deployment's default method for notifications whose template names none: "smtp"
    # or "webhook" (CODER_NOTIFICATIONS_METHOD); None when Coder has neither an SMTP
    # smarthost nor a webhook endpoint configured (Coder then uses no default method).
    default_method: str | None = "smtp"
    # Coder Inbox (CODER_NOTIFICATIONS_INBOX_ENABLED).
    inbox: bool = True


# Coder's own defaults: its default method, and the inbox on.
CODER_NOTIFICATION_DEFAULTS = NotificationDelivery()


# Without a setting of its own, the per-preset series are refreshed this often (or every sweep
# interval, when that is shorter).
_METRICS_REFRESH_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything `prebuildd run` needs; built by the CLI from flags and environment."""

    database_url: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    sweep_interval: timedelta = timedelta(seconds=60)
    # Short on purpose: notifications of one transaction are delivered together at its
    # commit, so 2 ms batch them; every millisecond here is added to a promotion's reaction
    # (bench/reaction.py: p50 50.3 ms with 10 ms, 44.9 ms with 2 ms). Bursts that go on for
    # longer are the cooldown's business, not the settle window's.
    settle: timedelta = timedelta(seconds=DEFAULT_SETTLE_SECONDS)
    # A template reconciled less than this ago waits for the rest of it before its next
    # reconcile: a template that keeps receiving events (a storm of job status changes) is
    # reconciled about once per cooldown, not once per settle window. 0 disables it.
    # Measured in docs/benchmarks.md ("Reaction, storm and memory").
    cooldown: timedelta = timedelta(seconds=1)
    plan: PlanConfig = field(default_factory=PlanConfig)
    # How Coder delivers the hard-limit notice (a mirror of Coder's own settings).
    notifications: NotificationDelivery = field(default_factory=NotificationDelivery)
    metrics_addr: str = "127.0.0.1:2118"
    pool_min_size: int = 2
    pool_max_size: int = 10
    # 0 = derive from the pool: half of it, at least 1 (leave room for claims and the sweep).
    reconcile_concurrency: int = 0
    # Upper bound on templates reconciled together in one transaction (sweeps, bursts).
    max_batch: int = 200
    # How often the per-preset series (desired, running, created_total...) are refreshed;
    # None: every 15 s, or every sweep interval when that is shorter.
    metrics_refresh: timedelta | None = None
    # The LISTEN connection's liveness (prebuildd.listener): after this long without a
    # notification, a `SELECT 1` on it must answer within the timeout, so a frozen connection
    # is noticed within 2 s and a promotion sent into it is reconciled within 3 s (by the
    # sweep after the reconnect). Nothing is sent while notifications flow.
    liveness_interval: timedelta = timedelta(seconds=1)
    liveness_timeout: timedelta = timedelta(seconds=1)
    # A lost LISTEN connection loses notifications until it is back (then a sweep runs), so
    # retry often: one connection attempt a second per replica costs the server nothing.
    reconnect_max_backoff: timedelta = timedelta(seconds=1)
    log_level: str = "info"
    log_format: str = "json"

    @property
    def concurrency(self) -> int:
        if self.reconcile_concurrency > 0:
            return self.reconcile_concurrency
        return max(1, self.pool_max_size // 2)

    @property
    def metrics_refresh_seconds(self) -> float:
        if self.metrics_refresh is not None:
            return self.metrics_refresh.total_seconds()
        return min(_METRICS_REFRESH_SECONDS, self.sweep_interval.total_seconds())


def env_or(env: Mapping[str, str], name: str, default: str | None) -> str | None:
    """`PREBUILDD_<NAME>` from the environment, else the default."""
    value = env.get(f"PREBUILDD_{name}")
    return value if value not in (None, "") else default


def at_least(value: int, setting: str, minimum: int) -> int:
    """`value` when it is >= `minimum`; parsing is argparse's job (type=int), range is ours."""
    if value < minimum:
        raise ConfigError(f"{setting}: {value} is below the minimum {minimum}")
    return value


def plan_config(args: argparse.Namespace) -> PlanConfig:
    """The planner's knobs from parsed flags (`prebuildd run|reconcile|status`)."""
    if args.failure_hard_limit < 0:
        raise ConfigError("--failure-hard-limit must be >= 0")
    if args.max_creates_per_cycle < 1:
        raise ConfigError("--max-creates-per-cycle must be >= 1")
    if args.max_pending_prebuild_jobs < 0:
        raise ConfigError("--max-pending-prebuild-jobs must be >= 0 (0 turns the cap off)")
    return PlanConfig(
        backoff_interval=args.backoff_interval,
        backoff_lookback=args.backoff_lookback,
        failure_hard_limit=args.failure_hard_limit,
        max_creates_per_cycle=args.max_creates_per_cycle,
        max_pending_prebuild_jobs=args.max_pending_prebuild_jobs,
    )


# `--notifications-method` values: Coder's CODER_NOTIFICATIONS_METHOD, or none.
NOTIFICATION_METHODS = ("smtp", "webhook", "none")


def notification_delivery(args: argparse.Namespace) -> NotificationDelivery:
    """Coder's notification settings as mirrored by `prebuildd run|reconcile` flags."""
    method = args.notifications_method
    if method not in NOTIFICATION_METHODS:
        choices = ", ".join(NOTIFICATION_METHODS)
        raise ConfigError(f"--notifications-method must be one of {choices}, not {method!r}")
    return NotificationDelivery(
        default_method=None if method == "none" else method,
        inbox=args.notifications_inbox_enabled,
    )


def parse_bool(text: str) -> bool:
    """true/false, as Coder's boolean settings take them (also 1/0, yes/no, on/off)."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{text!r} is not a boolean (use true or false)")


def settings_from(args: argparse.Namespace) -> Settings:
    """`prebuildd run`'s settings from its parsed flags (each already falls back to env)."""
    pool = at_least(args.pool_size, "--pool-size", 2)
    return replace(
        Settings(),
        database_url=args.database_url,
        data_dir=args.data_dir,
        sweep_interval=args.sweep_interval,
        settle=args.settle,
        cooldown=args.cooldown,
        plan=plan_config(args),
        notifications=notification_delivery(args),
        metrics_addr=args.metrics_addr or "",
        pool_max_size=pool,
        pool_min_size=min(2, pool),
        reconcile_concurrency=at_least(args.concurrency, "--concurrency", 0),
        log_level=args.log_level,
        log_format=args.log_format,
    )
