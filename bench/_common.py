"""Small helpers every bench shares: the machine line, timing statistics, figure tables."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
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
