"""Prometheus' own binaries for the operator-kit tests, and what those tests read from deploy/.

`promtool` (rule checks and rule unit tests) and `prometheus` (a real server scraping a real
`prebuildd run`) come from Debian's `prometheus` package, which `make test` installs when they
are missing and it can (root and apt-get). Where they cannot be had a test skips, naming the
tool and how to get it -- except under CI (`CI=true`), where a missing tool is a failure: a
green CI run must have run these tests.

The metric names the dashboard and the rules use are parsed from the files themselves, so
the tests never keep a second, hand-written list.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus" / "prebuildd-rules.yaml"
RULE_TESTS = DEPLOY / "prometheus" / "tests"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "prebuildd.json"
OPERATIONS = REPO / "docs" / "operations.md"

# Every series prebuildd exports carries this prefix, and nothing else in a PromQL expression
# of ours does (label values such as job="prebuildd" have no underscore after it).
_METRIC = re.compile(r"\bprebuildd_[a-zA-Z0-9_]+\b")
# Grafana's built-in interval variables, and a value for each when a query runs outside Grafana.
GRAFANA_INTERVALS = {"$__rate_interval": "30s", "$__interval": "15s", "$__range": "5m"}


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


PROMETHEUS_HINT = (
    "it comes with Debian's `prometheus` package, which `make test` installs when run as "
    "root on a machine with apt-get (or: apt-get install prometheus)"
)


# Explicit local opt-out for tests needing promtool, prometheus or kubectl (never under CI).
SKIP_VARIABLE = "PREBUILDD_TEST_SKIP_TOOLS"


def require_tool(name: str, hint: str = PROMETHEUS_HINT) -> str:
    """Path of an external tool; when missing, see `tool_missing`."""
    found = shutil.which(name)
    if found:
        return found
    tool_missing(f"`{name}` is not installed: {hint}")


def tool_missing(reason: str) -> NoReturn:
    """A test cannot run without an external tool: fail (under CI=true always; locally unless
    PREBUILDD_TEST_SKIP_TOOLS=1 asks for a skip) with the reason."""
    if under_ci():
        pytest.fail(f"{reason}. CI=true: this test may not skip.")
    # Locally a missing tool skips only when asked to, so a green run never hides it.
    if os.environ.get(SKIP_VARIABLE, "").strip() not in ("1", "true", "yes"):
        pytest.fail(f"{reason}; set {SKIP_VARIABLE}=1 to skip the tests that need it")
    pytest.skip(f"{reason}; skipped because {SKIP_VARIABLE}=1")


# ---- what the rules and the dashboard use ----------------------------------------------------


def load_rules() -> list[dict[str, Any]]:
    """Every alerting rule of the rules file, in order."""
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' collapsed panels included, rows themselves excluded."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard_panels(dashboard) for t in p.get("targets", [])]


def variable_queries(dashboard: dict[str, Any]) -> list[str]:
    return [str(v["query"]) for v in dashboard["templating"]["list"] if v.get("type") == "query"]


def metric_names(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in _METRIC.findall(expr)}


def rules_metric_names() -> set[str]:
    return metric_names([str(rule["expr"]) for rule in load_rules()])


def dashboard_metric_names() -> set[str]:
    dashboard = load_dashboard()
    return metric_names(dashboard_exprs(dashboard) + variable_queries(dashboard))


def scrape_job_of_rules() -> str:
    """The scrape job the target alerts select (`up{job="..."}`); exactly one."""
    jobs = {
        job for rule in load_rules() for job in re.findall(r'\bup\{job="([^"]+)"', rule["expr"])
    }
    assert len(jobs) == 1, f"the target alerts should name one scrape job, found {jobs}"
    return jobs.pop()


def without_grafana_variables(expr: str) -> str:
    """A dashboard query as Prometheus can run it: every selection variable matches all."""
    for variable, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?[a-zA-Z_]+\}?", ".*", expr)


# ---- a real Prometheus server ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PrometheusServer:
    """One `prometheus` process on loopback, with its own temporary storage."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def api(self, path: str, **params: str) -> Any:
        """The `data` of a successful /api/v1 answer; fails on an error status."""
        query = urllib.parse.urlencode(params)
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"GET {url}: {exc.code} {exc.read()[:500]!r}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result (a list of series; empty when nothing matched)."""
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.port}/-/ready"
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status) == 200
        except OSError:
            return False

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return "--- last lines of prometheus' log ---\n" + "\n".join(text[-lines:])


@contextlib.contextmanager
def prometheus_server(
    config: dict[str, Any], *, timeout: float = 60.0
) -> Iterator[PrometheusServer]:
    """Starts `prometheus` with `config` on a free loopback port; stops it (and only it) after.

    The binary only: no system service, storage in a temporary directory removed afterwards.
    """
    binary = require_tool("prometheus")
    with tempfile.TemporaryDirectory(prefix="pbd-prom-") as tmp:
        root = Path(tmp)
        config_file = root / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        log = root / "prometheus.log"
        for _attempt in range(3):  # the free port may be taken between probe and bind
            port = free_port()
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config_file}",
                        f"--storage.tsdb.path={root / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--storage.tsdb.retention.time=1h",
                    ],
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            server = PrometheusServer(process, port, log)
            try:
                deadline = time.monotonic() + timeout
                while not server.ready() and process.poll() is None:
                    if time.monotonic() > deadline:
                        raise AssertionError(
                            f"prometheus not ready after {timeout}s\n" + server.tail()
                        )
                    time.sleep(0.1)
                if process.poll() is not None:
                    if "address already in use" in server.tail():
                        continue
                    raise AssertionError(f"prometheus exited {process.returncode}\n{server.tail()}")
                yield server
                return
            finally:
                if process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait(timeout=10)
        raise AssertionError("prometheus could not bind a free port in three attempts")
