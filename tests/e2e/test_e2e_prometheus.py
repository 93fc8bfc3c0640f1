"""A real Prometheus scraping a real `prebuildd run`: the dashboard's and the rules' metrics
exist and return data, the dashboard's queries run, the rules evaluate and stay quiet while
the service is healthy, and alerts go pending when what they watch happens (reconciliation
paused, the replica gone).

The database holds the compose stack's example templates (deploy/seed/example-pools.sql),
whose presets want prebuilds; the simulated provisioner builds them, so the pools fill and
every per-preset series has data. Prometheus runs from its binary on a free loopback port,
with temporary storage, a 1 s scrape interval, deploy/prometheus/prometheus.yml's scrape job
(pointed at the process instead of compose's DNS name) and the rules file.

The metric names come from the dashboard JSON and the rules file (tests/_prometheus.py), never
from a list kept here. Needs the `prometheus` binary (`make test` installs Debian's package
when it can); without it the test skips, except under CI=true where it fails.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from _db import eligible, pools
from _procs import Processes, eventually, http_get
from prometheus_client.parser import text_string_to_metric_families

from _prometheus import (
    DEPLOY,
    PROMETHEUS_CONFIG,
    RULES,
    PrometheusServer,
    dashboard_exprs,
    dashboard_metric_names,
    load_dashboard,
    load_rules,
    prometheus_server,
    require_tool,
    rules_metric_names,
    scrape_job_of_rules,
    without_grafana_variables,
)
from _psql import run_file

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

SEED = DEPLOY / "seed" / "example-pools.sql"
# Generous bounds on a loaded 2-core machine; the checks poll and return as soon as they hold.
WAIT = 90.0


def _seed(url: str) -> None:
    # With psql, as compose runs it (the seed includes the builder of Coder rows with \ir).
    run_file(url, SEED)


def _config(metrics_port: int) -> dict[str, Any]:
    """The compose stack's prometheus.yml, scraping this one process every second."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    jobs = [j for j in config["scrape_configs"] if j["job_name"] == scrape_job_of_rules()]
    assert len(jobs) == 1, "prometheus.yml has no scrape job for the rules' job"
    job = jobs[0]
    job.pop("dns_sd_configs", None)
    job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    config["scrape_configs"] = [job]
    return config


def _exported_families(metrics_port: int) -> dict[str, str]:
    """Family name -> type, from the process's own /metrics.

    prometheus_client also exposes each counter's and histogram's creation time as
    `<name>_created`, which the text parser reads as a family of its own: not a metric.
    """
    status, body = http_get(metrics_port, "/metrics")
    assert status == 200
    found = {f.name: f.type for f in text_string_to_metric_families(body.decode())}
    return {
        name: kind
        for name, kind in found.items()
        if not (name.endswith("_created") and name.removesuffix("_created") in found)
    }


def _family(sample_name: str, families: dict[str, str]) -> str | None:
    for suffix in ("", "_total", "_bucket", "_sum", "_count"):
        if suffix and not sample_name.endswith(suffix):
            continue
        base = sample_name[: len(sample_name) - len(suffix)] if suffix else sample_name
        if base in families:
            return base
    return None


def _alert_states(prom: PrometheusServer) -> dict[str, set[str]]:
    states: dict[str, set[str]] = {}
    for alert in prom.api("alerts")["alerts"]:
        states.setdefault(alert["labels"]["alertname"], set()).add(alert["state"])
    return states


def _wait_alert(prom: PrometheusServer, name: str, on_timeout: Any) -> None:
    eventually(
        lambda: _alert_states(prom).get(name),
        timeout=WAIT,
        what=f"alert {name} pending or firing",
        interval=0.5,
        on_timeout=on_timeout,
    )


def test_real_prometheus_scrapes_every_metric_the_dashboard_and_rules_use(db_url: str) -> None:
    require_tool("prometheus")
    _seed(db_url)
    _seed(db_url)  # idempotent: compose runs it on every `up`
    wanted = {p.preset_id: p.desired_instances for p in pools(db_url).values()}
    assert sorted(wanted.values()) == [1, 2, 3], "the example seeds three presets"

    with Processes(db_url) as procs:
        # A 2 s sweep also means a 2 s refresh of the per-preset series.
        service = procs.service(sweep="2s")
        procs.provisioner()
        port = service.metrics_port()
        with prometheus_server(_config(port)) as prom:

            def context() -> str:
                return procs.dump() + "\n" + prom.tail()

            eventually(
                lambda: all(eligible(db_url, p) == n for p, n in wanted.items()),
                timeout=WAIT,
                what="every example pool full of ready prebuilds",
                on_timeout=context,
            )

            # Every metric name of the dashboard and the rules returns data.
            names = dashboard_metric_names() | rules_metric_names()
            assert len(names) >= 20, names

            def absent() -> list[str]:
                return sorted(name for name in names if not prom.query(name))

            eventually(
                lambda: not absent(),
                timeout=WAIT,
                what="every metric of the dashboard and the rules in Prometheus",
                interval=0.5,
                on_timeout=lambda: f"missing: {absent()}\n{context()}",
            )
            up = prom.query(f'up{{job="{scrape_job_of_rules()}"}}')
            assert [float(s["value"][1]) for s in up] == [1.0]

            # Every family prebuildd exports is on the dashboard (a new metric needs a panel).
            families = _exported_families(port)
            shown = {_family(name, families) for name in dashboard_metric_names()}
            assert set(families) - shown == set(), "exported but not on the dashboard"

            # Every dashboard query runs and returns data; the variables list the seeded names.
            dashboard = load_dashboard()

            def empty_queries() -> list[str]:
                return [
                    expr
                    for expr in dashboard_exprs(dashboard)
                    if not prom.query(without_grafana_variables(expr))
                ]

            eventually(
                lambda: not empty_queries(),
                timeout=WAIT,
                what="data for every dashboard query",
                interval=0.5,
                on_timeout=lambda: f"no data: {empty_queries()}",
            )
            labels = {
                label: set(prom.api(f"label/{label}/values"))
                for label in ("organization_name", "template_name", "preset_name")
            }
            assert "example" in labels["organization_name"]
            assert {"python", "go"} <= labels["template_name"]
            assert {"small", "large", "default"} <= labels["preset_name"]

            # The rules file loads and every alert evaluates without error on real data.
            def rules_ok() -> bool:
                loaded = [
                    rule
                    for group in prom.api("rules", type="alert")["groups"]
                    for rule in group["rules"]
                ]
                expected = {rule["alert"] for rule in load_rules()}
                return {r["name"] for r in loaded} == expected and all(
                    r["health"] == "ok" for r in loaded
                )

            eventually(rules_ok, timeout=WAIT, what="every rule evaluated, health ok")
            # A healthy service with full pools raises nothing (PrebuilddPoolEmpty may have
            # gone pending while the pools filled; it must clear).
            eventually(
                lambda: not _alert_states(prom),
                timeout=WAIT,
                what="no alert pending or firing for a healthy service",
                interval=0.5,
                on_timeout=lambda: f"active: {_alert_states(prom)}\n{context()}",
            )

            # Positive controls through the whole chain: database -> prebuildd -> Prometheus.
            pause = procs.spawn("pause", ["pause", "--database-url", db_url])
            assert pause.wait(timeout=60) == 0, pause.tail()
            _wait_alert(prom, "PrebuilddPaused", context)
            resume = procs.spawn("resume", ["resume", "--database-url", db_url])
            assert resume.wait(timeout=60) == 0, resume.tail()

            service.kill()
            _wait_alert(prom, "PrebuilddTargetDown", context)
            _wait_alert(prom, "PrebuilddDown", context)
