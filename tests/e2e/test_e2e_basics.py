"""The commands as an operator runs them: `run` + `provisioner`, probes and metrics, a clean
SIGTERM, and the scripted demo. Real processes on a real PostgreSQL."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time

import psycopg
import pytest
from _db import assert_integrity, eligible, pools, service_backends
from _procs import Processes, child_env, eventually, http_get, readyz, scrape, wait_ready

from factories import make_org, make_preset, make_template

pytestmark = pytest.mark.slow


def test_run_and_provisioner_fill_pools_and_serve_probes_and_metrics(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        org = make_org(conn, name="acme")
        web = make_template(conn, org, name="web")
        dev = make_preset(conn, web.version_id, name="dev", desired=2)
        api = make_template(conn, org, name="api")
        small = make_preset(conn, api.version_id, name="small", desired=1)
        conn.commit()
    wanted = {dev: 2, small: 1}

    with Processes(db_url) as procs:
        # A 2 s sweep also means a 2 s refresh of the per-preset metric series.
        service = procs.service(sweep="2s")
        procs.provisioner()
        port = service.metrics_port()

        eventually(
            lambda: all(eligible(db_url, p) == n for p, n in wanted.items()),
            timeout=30,
            what="every pool full of ready prebuilds",
            on_timeout=procs.dump,
        )
        status, body = http_get(port, "/healthz")
        assert (status, body) == (200, b"ok\n")
        wait_ready(port)
        healthy = {
            "ready": True,
            "database": "ok",
            "listener": "ok",
            "sweep": "ok",
            "reconciles": "ok",
            "event_triggers": "ok",  # checked by every sweep (the first one: at startup)
        }
        eventually(lambda: readyz(port) == (200, healthy), timeout=20, what="/readyz all ok")
        status, _ = readyz(port)
        assert status == 200

        labels = {"template_name": "web", "preset_name": "dev", "organization_name": "acme"}

        def gauges_current() -> bool:
            m = scrape(port)
            return (
                m.value("prebuildd_prebuilt_workspaces_desired", **labels) == 2
                and m.value("prebuildd_prebuilt_workspaces_eligible", **labels) == 2
            )

        eventually(gauges_current, timeout=20, what="per-preset gauges published", interval=0.5)
        metrics = scrape(port)
        assert metrics.total("prebuildd_events_received_total") > 0
        assert (metrics.value("prebuildd_prebuilt_workspaces_created_total", **labels) or 0) >= 2
        assert metrics.value("prebuildd_listener_connected") == 1
        assert metrics.total("prebuildd_reconciles_total", trigger="startup") >= 1
    assert {p: pools(db_url)[p].live for p in wanted} == wanted
    assert_integrity(db_url)


def test_sigterm_during_creates_exits_zero_quickly_and_leaves_no_torn_rows(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        preset = make_preset(conn, tpl.version_id, desired=1)
        conn.commit()

    with Processes(db_url) as procs:
        service = procs.service()
        procs.provisioner()
        service.wait_listening()
        eventually(lambda: pools(db_url)[preset].live == 1, timeout=20, what="first prebuild")
        with psycopg.connect(db_url) as conn:
            conn.execute(
                "UPDATE template_version_presets SET desired_instances = 150 WHERE id = %s",
                (preset,),
            )
        # Aim the signal at an open write transaction when we can see one.
        caught = _wait_for_writer(db_url, timeout=3.0)
        sent = time.monotonic()
        service.signal(signal.SIGTERM)
        code = service.wait(timeout=10)
        took = time.monotonic() - sent
        assert code == 0, service.tail()
        assert took < 5.0, f"SIGTERM took {took:.2f}s"
        assert service.records("stopped"), service.tail()
        print(f"SIGTERM -> exit {took * 1000:.0f} ms (signal sent mid-transaction: {caught})")

        # Its sessions end with it; none is left idle in a transaction.
        eventually(
            lambda: not service_backends(db_url), timeout=5, what="the service's sessions gone"
        )
    # All or nothing: the create of 149 either committed whole or not at all.
    assert pools(db_url)[preset].live in (1, 150)
    assert_integrity(db_url)


def _wait_for_writer(url: str, *, timeout: float) -> bool:
    """True as soon as a service session holds a transaction id (it has written)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(writing for *_, writing in service_backends(url)):
            return True
    return False


def test_demo_converges_and_reports_the_promotion(pg_admin_url: str) -> None:
    # `--metrics-addr`: a port chosen here, so that Prometheus (here: this test) can scrape it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [
        sys.executable, "-m", "prebuildd.cli", "demo", "--duration", "20s", "--no-live",
        "--database-url", pg_admin_url, "--log-format", "json", "--log-level", "warning",
        "--metrics-addr", f"127.0.0.1:{port}",
    ]
    demo = subprocess.Popen(
        argv, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert demo.stdout is not None
        first = demo.stdout.readline()
        assert first.strip() == f"metrics: http://127.0.0.1:{port}/metrics", first
        status, body = http_get(port, "/metrics")
        assert status == 200 and b"prebuildd_reconciles_total" in body
        rest, stderr = demo.communicate(timeout=90)
    finally:
        demo.kill()
    output = first + rest
    result = subprocess.CompletedProcess(argv, demo.returncode, output, stderr)
    assert result.returncode == 0, f"{output}\n{result.stderr[-3000:]}"
    assert re.search(r"pools converged:\s+yes", output), output
    promotion = re.search(r"promotion -> actions:\s+([\d.]+) ms \(trigger: (\w+)\)", output)
    assert promotion, output
    assert promotion.group(2) == "event", output
    print(output[output.index("summary:"):])
    errors = [r for r in map(_parse, result.stderr.splitlines()) if r.get("level") == "error"]
    assert not errors, errors


def _parse(line: str) -> dict[str, object]:
    try:
        record = json.loads(line)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}
