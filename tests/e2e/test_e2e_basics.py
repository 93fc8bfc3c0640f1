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
from _db import assert_integrity, eligible, holding_version, pools, service_backends
from _procs import (
    Processes,
    child_env,
    error_records,
    eventually,
    http_get,
    readyz,
    reconciled,
    scrape,
    wait_ready,
)

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
            timeout=60,
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

        eventually(gauges_current, timeout=60, what="per-preset gauges published", interval=0.5)
        metrics = scrape(port)
        assert metrics.total("prebuildd_events_received_total") > 0
        assert (metrics.value("prebuildd_prebuilt_workspaces_created_total", **labels) or 0) >= 2
        assert metrics.value("prebuildd_listener_connected") == 1
        assert metrics.total("prebuildd_reconciles_total", trigger="startup") >= 1
    assert {p: pools(db_url)[p].live for p in wanted} == wanted
    assert_integrity(db_url)


def test_sigterm_mid_write_lets_the_reconcile_in_flight_commit_then_exits_zero(
    db_url: str,
) -> None:
    """The promise of SIGTERM: no new work, reconciles in flight run to their commit (within
    the grace period), then a clean exit. The signal is made to land mid-write for certain:
    a row lock the creates need stops the reconcile after its first inserts, the signal is
    sent, and the lock is released once the service says it is shutting down."""
    with psycopg.connect(db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        preset = make_preset(conn, tpl.version_id, desired=1)
        conn.commit()

    with Processes(db_url) as procs:
        service = procs.service()
        service.wait_listening()
        # No provisioner: a pending create counts as live, and nothing else writes.
        eventually(lambda: pools(db_url)[preset].live == 1, timeout=60, what="first prebuild")
        with holding_version(db_url, tpl.version_id) as holder:
            with psycopg.connect(db_url) as conn:
                conn.execute(
                    "UPDATE template_version_presets SET desired_instances = 150 WHERE id = %s",
                    (preset,),
                )
            blocked = eventually(
                holder.blocked_writers, timeout=60, what="the reconcile stopped mid-write",
                on_timeout=service.tail,
            )
            sent = time.monotonic()
            service.signal(signal.SIGTERM)
            service.wait_for_msg("shutting down", timeout=60)
            # Still mid-write when the service began its shutdown.
            assert holder.blocked_writers() == blocked, service.tail()
        code = service.wait(timeout=120)
        took = time.monotonic() - sent
        assert code == 0, service.tail()
        assert service.records("stopped"), service.tail()
        assert not service.records("in-flight reconciles rolled back"), service.tail()
        acted = reconciled(service, template_id=str(tpl.id))
        assert any(r.get("actions", {}).get("create") for r in acted), service.tail()
        assert not error_records(service), service.tail()
        print(f"SIGTERM mid-write (sessions {sorted(blocked)}) -> exit 0 after {took:.2f}s")

        # Its sessions end with it; none is left idle in a transaction.
        eventually(
            lambda: not service_backends(db_url), timeout=60, what="the service's sessions gone"
        )
    # The reconcile in flight committed whole: 1 + 149 creates, nothing torn.
    assert pools(db_url)[preset].live == 150
    assert_integrity(db_url)


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
