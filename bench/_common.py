"""Small helpers every bench shares: the machine line, timing statistics, figure tables, and
the rule that an error line from the service under test turns a verdict into MISSED."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from bench._sql import bench_query


def machine() -> str:
    """nproc, RAM, kernel, Python: the context every figure needs."""
    ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} CPUs, {ram_gib:.1f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def print_header(title: str) -> None:
    print(f"== {title}")
    print(f"machine: {machine()}; {load()}")
    print(f"command: {' '.join([os.path.basename(sys.executable), '-m', *_module_argv()])}")


def _module_argv() -> list[str]:
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    name = spec.name if spec is not None else sys.argv[0]
    return [name, *sys.argv[1:]]


def common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="small fleets and few iterations (smoke run)"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse seeded fleets kept from an earlier run (keyed by their parameters)",
    )


@dataclass(frozen=True, slots=True)
class Stats:
    """Milliseconds."""

    n: int
    median: float
    p90: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        ms = sorted(s * 1000 for s in seconds)
        if not ms:
            raise ValueError("no samples")
        p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
        return cls(len(ms), statistics.median(ms), p90, ms[0], ms[-1])

    def row(self) -> str:
        return (
            f"median {self.median:8.2f} ms  p90 {self.p90:8.2f} ms  "
            f"min {self.minimum:8.2f} ms  max {self.maximum:8.2f} ms  (n={self.n})"
        )


def verdict(met: bool) -> str:
    return "MET" if met else "MISSED"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Plain aligned columns (the first row is the header)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


class CpuMeter:
    """CPU time of this process plus server backends (nanosecond `schedstat`), in seconds.

    On a shared, noisy machine wall time mixes in waiting for a core; CPU time is what the
    work costs. Backends are only measurable when the server runs on this machine (their
    /proc entries are `postgres` processes); otherwise only the client side is counted.
    """

    def __init__(self, *backend_pids: int | None) -> None:
        self._stats = [
            f"/proc/{pid}/schedstat"
            for pid in backend_pids
            if pid is not None and _is_postgres(pid)
        ]

    @property
    def includes_server(self) -> bool:
        return bool(self._stats)

    def read(self) -> float:
        client, server = self.split()
        return client + server

    def split(self) -> tuple[float, float]:
        """(this process, the server backends) CPU seconds so far."""
        server = 0.0
        for path in self._stats:
            with open(path) as f:
                server += int(f.read().split()[0]) / 1e9
        return time.process_time(), server


def _is_postgres(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip().startswith("postgres")
    except OSError:
        return False


class ServerCpu:
    """CPU seconds of a whole local PostgreSQL cluster: every backend, including those that
    have exited since (their time is added to the postmaster's children's total when it
    reaps them).

    For code that opens its own connections (a sweep in lanes, the service's pool), whose
    backends `CpuMeter` cannot name in advance. Counts background processes too (checkpointer,
    autovacuum), so it is meant for an otherwise idle cluster. `available` is False when the
    server is not on this machine.
    """

    def __init__(self, postmaster_pid: int | None) -> None:
        self._pid = postmaster_pid
        self._tick = os.sysconf("SC_CLK_TCK")

    @classmethod
    def of(cls, conn: psycopg.Connection[Any]) -> ServerCpu:
        """Find the postmaster through a process it always has (the checkpointer)."""
        row = conn.execute(bench_query("checkpointer_pid")).fetchone()
        if row is None or not _is_postgres(int(row[0])):
            return cls(None)
        parent = _stat_fields(int(row[0]))
        return cls(int(parent[1]) if parent else None)

    @property
    def available(self) -> bool:
        return self._pid is not None

    def read(self) -> float:
        if self._pid is None:
            return 0.0
        own = _stat_fields(self._pid)
        if own is None:
            return 0.0
        # utime, stime, cutime, cstime (fields 14-17 of /proc/<pid>/stat).
        total = sum(int(v) for v in own[11:15])
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == self._pid:
                continue
            fields = _stat_fields(int(entry))
            if fields is not None and int(fields[1]) == self._pid:
                total += int(fields[11]) + int(fields[12])
        return total / self._tick


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, ...]; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


# ---------------------------------------------------------------------------------------------
# Errors of the service under test: any one turns a verdict into MISSED
# ---------------------------------------------------------------------------------------------

# What the service logs when something went wrong that a figure must not hide: a listener
# callback that raised ("event listener callback on_event failed: ..."), a reconcile that
# raised ("reconcile crashed"), and any traceback (an exception logged with its stack, or one
# printed raw to stderr by a crash outside logging).
_ERROR_MESSAGES = (
    re.compile(r"\bcallback\b.*\bfailed\b"),
    re.compile(r"\breconcile crashed\b"),
    re.compile(r"^Traceback \(most recent call last\)"),
)
_ERROR_LEVELS = frozenset({"error", "critical", "fatal"})


def error_in_record(fields: Mapping[str, Any]) -> str | None:
    """Why one JSON log record of the service is an error line, or None when it is not.

    `fields` is a parsed JSON log line (level, msg, exc, ...); a line that was not JSON is
    passed as {"msg": <the raw line>}.
    """
    msg = str(fields.get("msg", ""))
    level = str(fields.get("level", "")).lower()
    if level in _ERROR_LEVELS:
        return f"level={level}: {msg}"
    if fields.get("exc"):
        return f"traceback logged with {msg!r}"
    if any(pattern.search(msg) for pattern in _ERROR_MESSAGES):
        return msg
    return None


def error_in_log_record(record: logging.LogRecord) -> str | None:
    """The same judgement for a record logged in this process (a service run in-process)."""
    fields: dict[str, Any] = {"level": record.levelname, "msg": record.getMessage()}
    if record.exc_info and record.exc_info[0] is not None:
        fields["exc"] = True
    return error_in_record(fields)


@dataclass
class ServiceErrors:
    """Error lines of the service under test, gathered while it ran.

    A bench's verdict is `errors.verdict(met)`: MET only when the target was met *and* the
    service logged no error line. A fast reconcile that crashed, a storm whose callbacks
    failed, a sweep that raised: none of those may print MET.
    """

    lines: list[str] = field(default_factory=list)

    def scan(self, records: Iterable[Mapping[str, Any]]) -> ServiceErrors:
        """Add the error lines among a subprocess's parsed log records."""
        for fields in records:
            found = error_in_record(fields)
            if found is not None:
                self.lines.append(found)
        return self

    @contextlib.contextmanager
    def watching(self) -> Iterator[ServiceErrors]:
        """Collect error lines logged in this process (the service run in-process) while the
        block runs: a handler on the root logger, removed afterwards."""
        handler = _Collect(self)
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            yield self
        finally:
            root.removeHandler(handler)

    @property
    def clean(self) -> bool:
        return not self.lines

    def verdict(self, met: bool) -> bool:
        return met and self.clean

    def summary(self, what: str = "the service under test") -> str:
        """One line for the report, MISSED when there was any error line."""
        if self.clean:
            return f"error lines from {what}: none"
        shown = "; ".join(self.lines[:3])
        more = f" (+{len(self.lines) - 3} more)" if len(self.lines) > 3 else ""
        return (
            f"error lines from {what}: {len(self.lines)}: {shown}{more} -- every verdict of "
            f"this run is {verdict(False)}"
        )


class _Collect(logging.Handler):
    def __init__(self, errors: ServiceErrors) -> None:
        # NOTSET: records with a traceback count at any level; error_in_log_record judges.
        super().__init__(level=logging.NOTSET)
        self._errors = errors

    def emit(self, record: logging.LogRecord) -> None:
        found = error_in_log_record(record)
        if found is not None:
            self._errors.lines.append(f"{record.name}: {found}")
