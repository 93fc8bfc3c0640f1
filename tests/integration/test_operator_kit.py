"""The operator kit: alert rules, their unit tests and runbooks, the dashboard, the manifests.

* The rules pass `promtool check rules`, and `promtool test rules` runs their unit tests
  (deploy/prometheus/tests/); every alert has a test where it fires and one where it stays
  quiet, and breaking an alert's expression makes its tests fail (so they can fail).
* Every alert has a runbook section in docs/operations.md and a runbook_url pointing at it.
* The PrometheusRule manifest and the dashboard JSON are what their scripts generate.
* The dashboard is well-formed for provisioning, and every metric it and the rules name is one
  prebuildd exports (tests/e2e/test_e2e_prometheus.py then checks them against a real
  Prometheus scraping a real `prebuildd run`).
* The compose stack's prometheus.yml passes `promtool check config`.

promtool comes from Debian's `prometheus` package (`make test` installs it when it can);
without it those tests skip, except under CI=true where they fail.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from _prometheus import (
    DASHBOARD,
    DEPLOY,
    OPERATIONS,
    PROMETHEUS_CONFIG,
    RULE_TESTS,
    RULES,
    dashboard_exprs,
    dashboard_metric_names,
    dashboard_panels,
    load_dashboard,
    load_rules,
    require_tool,
    rules_metric_names,
    variable_queries,
)
from prebuildd.metrics import Metrics

PROMETHEUSRULE = DEPLOY / "kubernetes" / "monitoring" / "prometheusrule.yaml"


def _run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


def _load_script(path: Path) -> ModuleType:
    """A generator script of deploy/ as a module (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_deploy_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rule_test_files() -> list[Path]:
    files = sorted(RULE_TESTS.glob("*.yaml"))
    assert files, f"no rule unit tests in {RULE_TESTS}"
    return files


# ---------------------------------------------------------------------------------------------
# Alert rules: promtool
# ---------------------------------------------------------------------------------------------


def test_promtool_accepts_the_rules() -> None:
    promtool = require_tool("promtool")
    result = _run([promtool, "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    promtool = require_tool("promtool")
    result = _run([promtool, "test", "rules", *map(str, _rule_test_files())])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout
    assert result.stdout.count("SUCCESS") == len(_rule_test_files())


def _alert_tests() -> list[dict[str, Any]]:
    cases = []
    for path in _rule_test_files():
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert doc["rule_files"] == ["../prebuildd-rules.yaml"], path
        for test in doc["tests"]:
            cases.extend(test.get("alert_rule_test", []))
    return cases


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    alerts = {rule["alert"] for rule in load_rules()}
    cases = _alert_tests()
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert alerts - firing == set(), "alerts without a unit test where they fire"
    assert alerts - quiet == set(), "alerts without a unit test where they stay quiet"
    assert (firing | quiet) <= alerts, "unit tests of alerts that do not exist"
    # A firing expectation must name the whole alert: labels and every annotation.
    for case in cases:
        for alert in case.get("exp_alerts") or []:
            assert alert["exp_labels"].get("severity"), case["alertname"]
            assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}


def _rules_with(alert: str, expr: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    hits = [r for g in doc["groups"] for r in g["rules"] if r.get("alert") == alert]
    assert len(hits) == 1
    hits[0]["expr"] = expr
    return doc


@pytest.mark.parametrize(
    ("mutation", "expr"),
    [("never fires", "vector(1) == 0"), ("always fires", "vector(1)")],
)
def test_unit_tests_fail_when_an_alert_is_broken(tmp_path: Path, mutation: str, expr: str) -> None:
    """Positive control: for every alert, an expression that never (or always) fires must
    make the unit tests fail, naming that alert."""
    promtool = require_tool("promtool")
    tests = tmp_path / "tests"
    shutil.copytree(RULE_TESTS, tests)
    unaffected = []
    for alert in sorted(rule["alert"] for rule in load_rules()):
        broken = _rules_with(alert, expr)
        (tmp_path / RULES.name).write_text(yaml.safe_dump(broken), encoding="utf-8")
        result = _run([promtool, "test", "rules", *sorted(map(str, tests.glob("*.yaml")))])
        output = result.stdout + result.stderr
        if result.returncode == 0 or f"alertname: {alert}," not in output:
            unaffected.append(alert)
    assert unaffected == [], f"unit tests still pass when these alerts {mutation}"


# ---------------------------------------------------------------------------------------------
# Alert rules: labels, annotations, runbooks
# ---------------------------------------------------------------------------------------------


def _runbook_sections() -> dict[str, str]:
    """`### Heading` -> its text, for the headings under `## Alerts`."""
    text = OPERATIONS.read_text(encoding="utf-8")
    alerts_part = text.split("\n## Alerts\n", 1)[1]
    sections: dict[str, str] = {}
    for chunk in re.split(r"\n### ", "\n" + alerts_part)[1:]:
        heading, _, body = chunk.partition("\n")
        sections[heading.strip()] = body
    return sections


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_every_alert_has_a_runbook_section_and_links_to_it() -> None:
    sections = _runbook_sections()
    rules = load_rules()
    assert {r["alert"] for r in rules} == set(sections), "one runbook section per alert"
    commands = re.compile(
        r"prebuildd (status|reconcile --once( --dry-run)?|pause|resume|invalidate|migrate)"
    )
    for rule in rules:
        alert = rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), alert
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], alert
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert (OPERATIONS.parent.parent / path).resolve() == OPERATIONS.resolve(), alert
        assert anchor == _anchor(alert), alert
        body = sections[alert]
        for part in ("**Means:**", "**Check:**", "**Helps:**"):
            assert part in body, f"{alert}: runbook lacks {part}"
        assert commands.search(body), f"{alert}: the runbook names no prebuildd command"


# ---------------------------------------------------------------------------------------------
# Generated files
# ---------------------------------------------------------------------------------------------


def test_prometheusrule_manifest_is_generated_from_the_rules_file() -> None:
    script = _load_script(DEPLOY / "prometheus" / "render_prometheusrule.py")
    assert PROMETHEUSRULE.read_text(encoding="utf-8") == script.render(), (
        "deploy/kubernetes/monitoring/prometheusrule.yaml is out of date: run "
        "python deploy/prometheus/render_prometheusrule.py"
    )
    manifest = yaml.safe_load(PROMETHEUSRULE.read_text(encoding="utf-8"))
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["spec"] == yaml.safe_load(RULES.read_text(encoding="utf-8"))


def test_prometheusrule_renderer_rejects_a_file_without_groups() -> None:
    script = _load_script(DEPLOY / "prometheus" / "render_prometheusrule.py")
    with pytest.raises(ValueError, match="groups"):
        script.render("# only a comment\n")


def test_dashboard_json_is_what_its_script_generates() -> None:
    script = _load_script(DEPLOY / "grafana" / "dashboard.py")
    assert DASHBOARD.read_text(encoding="utf-8") == script.render(), (
        "deploy/grafana/dashboards/prebuildd.json is out of date: run "
        "python deploy/grafana/dashboard.py"
    )


# ---------------------------------------------------------------------------------------------
# Dashboard structure
# ---------------------------------------------------------------------------------------------


def test_dashboard_is_provisionable_with_a_datasource_variable() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "prebuildd" and dashboard["title"]
    assert dashboard.get("id") is None, "a provisioned dashboard must not carry a database id"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    source = variables["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    ref = {"type": "prometheus", "uid": "${datasource}"}
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == ref, variable["name"]
    panels = dashboard_panels(dashboard)
    assert panels
    for panel in panels:
        assert panel["datasource"] == ref, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"] == ref, panel["title"]
            assert target["expr"].strip(), panel["title"]
        assert panel.get("description"), f"{panel['title']}: say what the panel shows"


def test_dashboard_layout_fits_the_grid_and_ids_are_unique() -> None:
    dashboard = load_dashboard()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))


def test_dashboard_queries_use_only_defined_variables() -> None:
    dashboard = load_dashboard()
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    builtin = {"__rate_interval", "__interval", "__range"}
    texts = dashboard_exprs(dashboard) + variable_queries(dashboard)
    texts += [p["title"] for p in dashboard_panels(dashboard)]
    used = {name for text in texts for name in re.findall(r"\$\{?(\w+)\}?", text)}
    assert used - builtin <= defined, f"undefined variables: {used - builtin - defined}"
    repeats = {p["repeat"] for p in dashboard_panels(dashboard) if p.get("repeat")}
    assert repeats <= defined


def test_dashboard_shows_what_the_operator_needs() -> None:
    """The panels the operator kit promises, by the metric behind them."""
    exprs = "\n".join(dashboard_exprs(load_dashboard()))
    for needed in (
        "prebuildd_prebuilt_workspaces_desired",
        "prebuildd_prebuilt_workspaces_running",
        "prebuildd_prebuilt_workspaces_eligible",
        "sum by (trigger) (rate(prebuildd_reconciles_total",
        "prebuildd_prebuilds_reconciliation_duration_seconds_bucket",
        "prebuildd_reconcile_lag_seconds_bucket",
        "prebuildd_queue_depth",
        "prebuildd_listener_connected",
        "prebuildd_listener_reconnects_total",
        "sum by (kind) (rate(prebuildd_reconcile_errors_total",
        "prebuildd_prebuilt_workspaces_preset_hard_limited",
        "prebuildd_prebuilt_workspaces_preset_validation_failed",
        "prebuildd_prebuilt_workspaces_reconciliation_paused",
        "prebuildd_prebuilt_workspaces_created_total",
        "prebuildd_prebuilt_workspaces_failed_total",
        "prebuildd_prebuilt_workspaces_claimed_total",
    ):
        assert needed in exprs, needed


def _exported_sample_names() -> set[str]:
    """The sample names a prebuildd process can export, from its metrics registry."""
    suffixes = {
        "counter": ("_total",),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
    }
    names = set()
    for family in text_string_to_metric_families(Metrics().render().decode()):
        names |= {family.name + suffix for suffix in suffixes[family.type]}
    return names


def test_dashboard_and_rules_name_only_metrics_prebuildd_exports() -> None:
    exported = _exported_sample_names()
    assert "prebuildd_prebuilt_workspaces_desired" in exported
    assert dashboard_metric_names() - exported == set(), "the dashboard names unknown metrics"
    assert rules_metric_names() - exported == set(), "the rules name unknown metrics"


# ---------------------------------------------------------------------------------------------
# The compose stack's Prometheus configuration
# ---------------------------------------------------------------------------------------------


def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """`promtool check config` on prometheus.yml, with the rule files at the host paths the
    compose service mounts them from (so the rules are loaded and checked too)."""
    promtool = require_tool("promtool")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    mounts = {}
    for volume in compose["services"]["prometheus"]["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (DEPLOY / source).resolve()
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    config["rule_files"] = [str(mounts[path]) for path in config["rule_files"]]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = _run([promtool, "check", "config", str(checked)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout
