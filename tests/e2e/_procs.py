"""Real `prebuildd` processes for the end-to-end drills: spawn, watch, probe, kill.

Every process is `python -m prebuildd.cli ...` with `service/` on PYTHONPATH, JSON logs on
stderr and its HTTP endpoints on a free port (`--metrics-addr 127.0.0.1:0`; the bound port is
read back from the log line "serving /metrics, /healthz, /readyz"). Reader threads drain both
pipes continuously, so a chatty process never blocks on a full pipe, and keep every line for
assertions and for the failure message.

Processes are started through a `Processes` context manager, which SIGKILLs whatever is still
running when the block ends, however it ends: a failed assertion must not leave a replica
writing into the next test's server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
SERVICE_DIR = REPO / "service"

SERVING_MSG = "serving /metrics, /healthz, /readyz"
LISTENING_MSG = "event listener connected, listening on prebuildd_events"

Record = dict[str, Any]
T = TypeVar("T")


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment, minus settings that would change what the child does, plus
    `extra` (what a test sets on purpose, e.g. OTEL_* for the trace export)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PREBUILDD_", "OTEL_"))
    }
    inherited = os.environ.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SERVICE_DIR), inherited) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Proc:
    """One child process and everything it has printed so far."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = [sys.executable, "-m", "prebuildd.cli", *args]
        self.started_at = time.monotonic()
        self._cond = threading.Condition()
        self._records: list[Record] = []
        self._stdout: list[str] = []
        self._port: int | None = None
        self.popen = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=child_env(env),
            cwd=REPO,
            text=True,
            bufsize=1,
            # Its own process group: a signal meant for pytest never reaches it by accident.
            start_new_session=True,
        )
        self._readers = [
            threading.Thread(target=self._read_stderr, daemon=True, name=f"{name}-stderr"),
            threading.Thread(target=self._read_stdout, daemon=True, name=f"{name}-stdout"),
        ]
        for reader in self._readers:
            reader.start()

    # ---- output ------------------------------------------------------------------------

    def _read_stderr(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            record = _parse_log_line(line)
            with self._cond:
                self._records.append(record)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_stdout(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._cond:
                self._stdout.append(line.rstrip("\n"))
                self._cond.notify_all()

    def records(self, msg: str | None = None) -> list[Record]:
        """Log records so far (only those with message `msg` when given)."""
        with self._cond:
            records = list(self._records)
        return records if msg is None else [r for r in records if r.get("msg") == msg]

    def stdout(self) -> str:
        with self._cond:
            return "\n".join(self._stdout)

    def tail(self, lines: int = 25) -> str:
        shown = [json.dumps(r) for r in self.records()[-lines:]]
        return f"--- last log lines of {self.name} (pid {self.pid}) ---\n" + "\n".join(shown)

    def wait_for(
        self, predicate: Callable[[Record], bool], *, timeout: float, what: str
    ) -> Record:
        """The first log record (old or new) matching `predicate`; fails after `timeout`."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for record in self._records[seen:]:
                    if predicate(record):
                        return record
                seen = len(self._records)
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._readers_alive()):
                    break
                self._cond.wait(min(left, 0.2))
        state = "timed out" if self.popen.poll() is None else f"exited {self.popen.returncode}"
        raise AssertionError(f"{self.name}: no log line {what} ({state})\n{self.tail()}")

    def wait_for_msg(self, msg: str, *, timeout: float = 60.0) -> Record:
        return self.wait_for(lambda r: r.get("msg") == msg, timeout=timeout, what=repr(msg))

    def _readers_alive(self) -> bool:
        return any(reader.is_alive() for reader in self._readers)

    # ---- endpoints ---------------------------------------------------------------------

    def metrics_port(self, timeout: float = 60.0) -> int:
        """The port of /metrics, /healthz and /readyz, from the process's own log line."""
        if self._port is None:
            record = self.wait_for_msg(SERVING_MSG, timeout=timeout)
            self._port = int(str(record["addr"]).rpartition(":")[2])
        return self._port

    def wait_listening(self, timeout: float = 60.0) -> None:
        """Until the listener's first LISTEN (the startup sweep is requested right after)."""
        self.wait_for_msg(LISTENING_MSG, timeout=timeout)

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: signal.Signals) -> None:
        if self.alive:
            self.popen.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL (kill -9) and reap."""
        if self.alive:
            self.popen.kill()
        self.popen.wait(timeout=10)

    def wait(self, timeout: float) -> int:
        """Exit code, waiting at most `timeout` seconds (subprocess.TimeoutExpired after)."""
        code = self.popen.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=2)
        return code


def _parse_log_line(line: str) -> Record:
    text = line.rstrip("\n")
    try:
        value = json.loads(text)
    except ValueError:
        return {"raw": text}
    return value if isinstance(value, dict) else {"raw": text}


class Processes:
    """Starts prebuildd commands against one database; kills all of them on exit."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.started: list[Proc] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill_all()

    def kill_all(self) -> None:
        for proc in self.started:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                proc.kill()

    def spawn(
        self, name: str, args: Iterable[str], env: Mapping[str, str] | None = None
    ) -> Proc:
        proc = Proc(name, list(args), env)
        self.started.append(proc)
        return proc

    def service(
        self,
        *extra: str,
        name: str = "service",
        sweep: str = "1h",
        url: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Proc:
        """`prebuildd run` with JSON logs, a free metrics port and the given sweep interval
        (on `url` when given: another role's URL of the same database)."""
        args = [
            "run",
            "--database-url",
            url or self.database_url,
            "--log-format",
            "json",
            "--metrics-addr",
            "127.0.0.1:0",
            "--sweep-interval",
            sweep,
            *extra,
        ]
        return self.spawn(name, args, env)

    def provisioner(
        self,
        *extra: str,
        build_time: str = "100ms",
        agent_ready_delay: str = "50ms",
        name: str = "provisioner",
    ) -> Proc:
        args = [
            "provisioner",
            "--database-url",
            self.database_url,
            "--log-format",
            "json",
            "--build-time",
            build_time,
            "--agent-ready-delay",
            agent_ready_delay,
            *extra,
        ]
        return self.spawn(name, args)

    def dump(self) -> str:
        """The tails of every process's log, for failure messages."""
        return "\n".join(proc.tail() for proc in self.started)


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """One `prebuildd` command to its end, as an operator runs it (JSON logs on stderr)."""
    argv = [sys.executable, "-m", "prebuildd.cli", *args]
    return subprocess.run(
        argv, env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


# ---- what a process logged ------------------------------------------------------------------

# An error line of the service: what no healthy run may print.
ERROR_LEVELS = ("error", "critical")


def error_records(proc: Proc) -> list[Record]:
    """Every record logged at error level or with a traceback, and raw tracebacks."""
    return [
        r
        for r in proc.records()
        if r.get("level") in ERROR_LEVELS
        or r.get("exc")
        or str(r.get("raw", "")).startswith("Traceback")
    ]


def reconciled(proc: Proc, **fields: Any) -> list[Record]:
    """The `reconciled` records of `proc` whose fields equal `fields`."""
    return [
        r for r in proc.records("reconciled") if all(r.get(k) == v for k, v in fields.items())
    ]


# ---- HTTP and metrics ---------------------------------------------------------------------


def http_get(port: int, path: str, *, timeout: float = 5.0) -> tuple[int, bytes]:
    """Status and body of GET http://127.0.0.1:port/path (error statuses included)."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    status, body = http_get(port, "/readyz")
    return status, json.loads(body)


@dataclass(frozen=True, slots=True)
class Scrape:
    """One /metrics scrape: (sample name, labels) -> value."""

    samples: tuple[tuple[str, dict[str, str], float], ...]

    def values(self, name: str, **labels: str) -> list[float]:
        return [
            value
            for sample, sample_labels, value in self.samples
            if sample == name and all(sample_labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the single matching sample; None if there is none."""
        found = self.values(name, **labels)
        if len(found) > 1:
            raise AssertionError(f"{len(found)} samples of {name} match {labels}")
        return found[0] if found else None

    def total(self, name: str, **labels: str) -> float:
        """Sum of every matching sample (e.g. a counter over all its `kind` labels)."""
        return sum(self.values(name, **labels))


def scrape(port: int) -> Scrape:
    status, body = http_get(port, "/metrics")
    if status != 200:
        raise AssertionError(f"/metrics answered {status}")
    samples = tuple(
        (sample.name, dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    )
    return Scrape(samples)


# ---- waiting ------------------------------------------------------------------------------


def eventually(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Poll `check` until it returns something truthy; return that. Fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            detail = on_timeout() if on_timeout else ""
            raise AssertionError(f"still not {what} after {timeout:.1f}s\n{detail}")
        time.sleep(interval)


def wait_ready(port: int, *, timeout: float = 60.0) -> dict[str, Any]:
    """Until /readyz answers 200; returns its JSON body."""

    def ready() -> dict[str, Any] | None:
        try:
            status, body = readyz(port)
        except OSError:
            return None
        return body if status == 200 else None

    return eventually(ready, timeout=timeout, what="ready (/readyz 200)", interval=0.1)
