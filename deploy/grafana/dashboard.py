"""The prebuildd Grafana dashboard, built with Grafana's foundation SDK.

    python deploy/grafana/dashboard.py          # rewrites deploy/grafana/dashboards/prebuildd.json
    python deploy/grafana/dashboard.py --check  # exit 1 when the committed JSON is out of date

The JSON next to it is what Grafana provisions (deploy/grafana/provisioning/, compose) or
what an operator imports; this script is its source. tests/integration/test_operator_kit.py
fails when the two differ, and the end-to-end test checks that every metric a panel queries
exists and returns data from a real `prebuildd run` scraped by a real Prometheus.

Conventions of the queries:
* every query is filtered by the `job` and `instance` variables; per-preset queries also by
  `organization`, `template` and `preset`;
* per-preset series are exported by every replica from the same database, so they are
  aggregated with `max by (...)` (a `sum` would count each prebuild once per replica);
* the data source is the `datasource` variable (any Prometheus-compatible source).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog import builder as cog
from grafana_foundation_sdk.cog import variants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "prebuildd.json"
UID = "prebuildd"

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
# Every series of the service.
SERVICE = 'job=~"$job", instance=~"$instance"'
# Every per-preset series the variables select.
PRESET = (
    SERVICE + ', organization_name=~"$organization", template_name=~"$template",'
    ' preset_name=~"$preset"'
)
BY_PRESET = "max by (organization_name, template_name, preset_name)"
PRESET_LEGEND = "{{template_name}}/{{preset_name}}"


def query(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .expr(expr)
        .legend_format(legend or "__auto")
        .ref_id(ref)
        .datasource(DATASOURCE)
    )


def queries(*pairs: tuple[str, str]) -> list[cog.Builder[variants.Dataquery]]:
    """Queries with reference ids A, B, C... in order."""
    return [query(expr, legend, chr(ord("A") + n)) for n, (expr, legend) in enumerate(pairs)]


def legend() -> common_builder.VizLegendOptions:
    return (
        common_builder.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
    )


def graph(
    title: str,
    description: str,
    targets: Sequence[tuple[str, str]],
    *,
    unit: str = "short",
    width: int = 8,
    height: int = 8,
    minimum: float | None = 0,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(queries(*targets))
        .unit(unit)
        .span(width)
        .height(height)
        .line_width(1)
        .fill_opacity(10)
        .show_points(common.VisibilityMode.NEVER)
        .legend(legend())
        .tooltip(common_builder.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI))
    )
    if minimum is not None:
        panel = panel.min(minimum)
    return panel


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for value, color in steps])
    )


def flag_mapping(off: tuple[str, str], on: tuple[str, str]) -> list[model.ValueMapping]:
    """Show a 0/1 gauge as words with colours."""
    return [
        model.ValueMap(
            options={
                "0": model.ValueMappingResult(text=off[0], color=off[1], index=0),
                "1": model.ValueMappingResult(text=on[0], color=on[1], index=1),
            }
        )
    ]


def single_stat(
    title: str,
    description: str,
    expr: str,
    *,
    unit: str = "short",
    steps: Sequence[tuple[float | None, str]] = ((None, "green"),),
    mappings: list[model.ValueMapping] | None = None,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(queries((expr, "")))
        .unit(unit)
        .span(4)
        .height(4)
        .thresholds(thresholds(*steps))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if mappings:
        panel = panel.mappings(mappings)
    return panel


def timeline(
    title: str,
    description: str,
    targets: Sequence[tuple[str, str]],
    mappings: list[model.ValueMapping],
    *,
    width: int = 12,
    height: int = 8,
) -> statetimeline.Panel:
    return (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(queries(*targets))
        .span(width)
        .height(height)
        .mappings(mappings)
        .thresholds(thresholds((None, "green")))
        .show_value(common.VisibilityMode.NEVER)
        .merge_values(True)
        .legend(legend())
    )


def variables() -> list[cog.Builder[model.VariableModel]]:
    def label_values(
        name: str, title: str, label: str, metric: str, selector: str = ""
    ) -> db.QueryVariable:
        series = f"{metric}{{{selector}}}" if selector else metric
        return (
            db.QueryVariable(name)
            .label(title)
            .datasource(DATASOURCE)
            .query(f"label_values({series}, {label})")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(model.VariableOption(selected=True, text=["All"], value=["$__all"]))
        )

    listener = "prebuildd_listener_connected"
    desired = "prebuildd_prebuilt_workspaces_desired"
    return [
        db.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        label_values("job", "Job", "job", listener),
        label_values("instance", "Replica", "instance", listener, 'job=~"$job"'),
        label_values("organization", "Organization", "organization_name", desired, 'job=~"$job"'),
        label_values(
            "template",
            "Template",
            "template_name",
            desired,
            'job=~"$job", organization_name=~"$organization"',
        ),
        label_values(
            "preset",
            "Preset",
            "preset_name",
            desired,
            'job=~"$job", organization_name=~"$organization", template_name=~"$template"',
        ),
    ]


def overview() -> list[cog.Builder[model.Panel]]:
    return [
        single_stat(
            "Replicas up",
            "Replicas Prometheus scrapes successfully (`up`).",
            f"sum(up{{{SERVICE}}})",
            steps=((None, "red"), (1, "green")),
        ),
        single_stat(
            "Listeners connected",
            "Replicas whose LISTEN connection is up: they react to events within milliseconds. "
            "Without it a replica only acts on its periodic sweep.",
            f"sum(prebuildd_listener_connected{{{SERVICE}}})",
            steps=((None, "red"), (1, "green")),
        ),
        single_stat(
            "Reconciliation",
            "Coder's prebuilds_settings pause switch (`prebuildd pause` / `resume`, or "
            "`coder prebuilds pause`). While paused nothing is created, replaced or deleted.",
            f"max(prebuildd_prebuilt_workspaces_reconciliation_paused{{{SERVICE}}})",
            mappings=flag_mapping(("running", "green"), ("PAUSED", "red")),
        ),
        single_stat(
            "Presets hard-limited",
            "Presets whose last builds all failed: they get no new prebuilds until a fixed "
            "template version is published.",
            f"count({BY_PRESET} (prebuildd_prebuilt_workspaces_preset_hard_limited{{{PRESET}}})"
            " > 0) or vector(0)",
            steps=((None, "green"), (1, "red")),
        ),
        single_stat(
            "Presets validation-failed",
            "Presets whose prebuild creates were rejected as invalid.",
            f"count({BY_PRESET} (prebuildd_prebuilt_workspaces_preset_validation_failed"
            f"{{{PRESET}}}) > 0) or vector(0)",
            steps=((None, "green"), (1, "red")),
        ),
        single_stat(
            "Event triggers",
            "Whether every prebuildd trigger on Coder's tables exists and is enabled, as the "
            "replicas found at their last sweep. MISSING: changes to those tables wait for the "
            "periodic sweep; run `prebuildd migrate` (PrebuilddEventTriggersMissing runbook).",
            f"min(prebuildd_event_triggers_ok{{{SERVICE}}})",
            mappings=flag_mapping(("MISSING", "red"), ("ok", "green")),
        ),
        single_stat(
            "Per-preset series age",
            "Time since the oldest replica refreshed its per-preset series (every 15 s, or "
            "every sweep if shorter). Growing: the refresh reads are failing.",
            f"time() - min(prebuildd_prebuilt_workspaces_metrics_last_updated{{{SERVICE}}})",
            unit="s",
            steps=((None, "green"), (120, "orange"), (300, "red")),
        ),
    ]


def pools() -> list[cog.Builder[model.Panel]]:
    def series(metric: str, what: str) -> tuple[str, str]:
        return (
            f"{BY_PRESET} (prebuildd_prebuilt_workspaces_{metric}{{{PRESET}}})",
            f"{PRESET_LEGEND} {what}",
        )

    per_preset = graph(
        "Pool: $preset",
        "Desired: what the preset should hold now (its count, or the schedule covering now). "
        "Running: prebuilds whose latest build started successfully. Eligible: running and "
        "agents ready, i.e. claimable. Eligible below desired for long: see the "
        "PrebuilddPoolEmpty runbook.",
        [
            series("desired", "desired"),
            series("running", "running"),
            series("eligible", "eligible"),
        ],
        width=8,
    )
    per_preset = per_preset.repeat("preset").repeat_direction("h").max_per_row(3)
    status = timeline(
        "Preset status",
        "Hard-limited: the last builds all failed, creates stopped. Validation failed: creates "
        "rejected as invalid. Both need a fixed template version.",
        [
            (
                f"{BY_PRESET} (prebuildd_prebuilt_workspaces_preset_hard_limited{{{PRESET}}})",
                f"{PRESET_LEGEND} hard limit",
            ),
            (
                f"{BY_PRESET} (prebuildd_prebuilt_workspaces_preset_validation_failed{{{PRESET}}})",
                f"{PRESET_LEGEND} validation",
            ),
        ],
        flag_mapping(("ok", "green"), ("FAILED", "red")),
        width=24,
    )
    # The status first: the repeated panel grows with the presets selected.
    return [status, per_preset]


def lifecycle() -> list[cog.Builder[model.Panel]]:
    def per_minute(metric: str) -> tuple[str, str]:
        return (
            f"{BY_PRESET} (rate(prebuildd_prebuilt_workspaces_{metric}{{{PRESET}}}"
            "[$__rate_interval])) * 60",
            PRESET_LEGEND,
        )

    return [
        graph(
            "Prebuilds created / min",
            "New prebuilt workspaces queued to reach the desired count.",
            [per_minute("created_total")],
        ),
        graph(
            "Prebuild builds failed / min",
            "Prebuilds whose build failed (each is kept as evidence and replaced; repeated "
            "failures back off, then hit the hard limit).",
            [per_minute("failed_total")],
        ),
        graph(
            "Prebuilds claimed / min",
            "Prebuilds handed over to users (each claim is replaced at once).",
            [per_minute("claimed_total")],
        ),
        graph(
            "Creates held by the pending-job cap",
            "Creates a preset wants but waits for: its organization's provisioner tag set "
            "already has --max-pending-prebuild-jobs prebuild create jobs that no provisioner "
            "picked up. Presets take turns as jobs are picked up. Always 0 without the cap. "
            "Held for long: see the PrebuilddCreatesHeld runbook.",
            [
                (
                    f"{BY_PRESET} (prebuildd_prebuilt_workspaces_creates_held{{{PRESET}}})",
                    PRESET_LEGEND,
                )
            ],
            width=24,
        ),
    ]


def demand() -> list[cog.Builder[model.Panel]]:
    """Hits (claims) and misses, and the forecast's suggestion (docs/operations.md)."""

    def per_hour(metric: str, what: str) -> tuple[str, str]:
        return (
            f"{BY_PRESET} (rate(prebuildd_prebuilt_workspaces_{metric}{{{PRESET}}}"
            "[$__rate_interval])) * 3600",
            f"{PRESET_LEGEND} {what}",
        )

    def last_hour(metric: str) -> str:
        return f"{BY_PRESET} (increase(prebuildd_prebuilt_workspaces_{metric}{{{PRESET}}}[1h]))"

    saved = "prebuildd_prebuilt_workspaces_claim_time_saved_seconds"
    return [
        graph(
            "Claims vs misses / h",
            "Claims: people who got a prebuild at once. Misses: people who created a "
            "workspace from a preset with a pool and waited for a fresh build, because no "
            "prebuild was ready. Misses that keep coming: the pool is too small for the "
            "demand (prebuildd autoscale).",
            [per_hour("claimed_total", "claims"), per_hour("claim_misses_total", "misses")],
        ),
        graph(
            "Hit rate (last hour)",
            "Share of the demand a prebuild served: claims / (claims + misses) over the last "
            "hour. Empty while nobody asked.",
            [
                (
                    f"{last_hour('claimed_total')} / ({last_hour('claimed_total')} + "
                    f"{last_hour('claim_misses_total')})",
                    PRESET_LEGEND,
                )
            ],
            unit="percentunit",
        ),
        graph(
            "Suggested vs desired",
            "Suggested: the pool size the demand forecast asks for (presets with an autoscale "
            "policy). Desired: what the pool aims for -- the template's count, or the "
            "suggestion in auto mode.",
            [
                (
                    f"{BY_PRESET} (prebuildd_prebuilt_workspaces_suggested{{{PRESET}}})",
                    f"{PRESET_LEGEND} suggested",
                ),
                (
                    f"{BY_PRESET} (prebuildd_prebuilt_workspaces_desired{{{PRESET}}})",
                    f"{PRESET_LEGEND} desired",
                ),
            ],
        ),
        graph(
            "Time saved per claim",
            "What a claim spared a person on average: the prebuild's own build (queued to "
            "done) minus the claim build, over claims where both succeeded.",
            [
                (
                    f"{BY_PRESET} (rate({saved}_sum{{{PRESET}}}[$__rate_interval])) / "
                    f"{BY_PRESET} (rate({saved}_count{{{PRESET}}}[$__rate_interval]))",
                    PRESET_LEGEND,
                )
            ],
            unit="s",
            width=24,
        ),
    ]


def reconciler() -> list[cog.Builder[model.Panel]]:
    def quantiles(metric: str) -> list[tuple[str, str]]:
        return [
            (
                f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{SERVICE}}}"
                "[$__rate_interval])))",
                f"p{round(q * 100)}",
            )
            for q in (0.5, 0.9, 0.99)
        ]

    return [
        graph(
            "Reconciles / s by trigger",
            "What started each reconcile: event (a NOTIFY from a trigger), timer (a schedule "
            "boundary, TTL expiry or backoff end), sweep (the periodic safety net), startup.",
            [
                (
                    f"sum by (trigger) (rate(prebuildd_reconciles_total{{{SERVICE}}}"
                    "[$__rate_interval]))",
                    "{{trigger}}",
                )
            ],
            unit="ops",
        ),
        graph(
            "Reconcile duration by trigger",
            "Wall time of one reconcile, lock to last action, p50 and p99 per trigger: event "
            "(a person's change or a build's progress), timer, sweep, startup, retry. Sweep and "
            "startup batches hold many templates and take longer.",
            [
                (
                    f"histogram_quantile({q}, sum by (le, trigger) (rate("
                    f"prebuildd_prebuilds_reconciliation_duration_seconds_bucket{{{SERVICE}}}"
                    "[$__rate_interval])))",
                    f"{{{{trigger}}}} p{round(q * 100)}",
                )
                for q in (0.5, 0.99)
            ],
            unit="s",
        ),
        graph(
            "Event lag",
            "From the first event of a batch to the start of the reconcile it caused (settle "
            "window, cooldown and queueing). The PrebuilddEventLagHigh alert watches p99.",
            quantiles("prebuildd_reconcile_lag_seconds"),
            unit="s",
        ),
        graph(
            "Queue depth",
            "Templates waiting in each replica's work queue (queued, or waiting for a timer).",
            [(f"max by (instance) (prebuildd_queue_depth{{{SERVICE}}})", "{{instance}}")],
        ),
        graph(
            "Actions / s by kind",
            "What reconciles did: creates, deletes, canceled pending jobs, status changes.",
            [
                (
                    f"sum by (kind) (rate(prebuildd_actions_total{{{SERVICE}}}[$__rate_interval]))",
                    "{{kind}}",
                )
            ],
            unit="ops",
        ),
        graph(
            "Events / s by kind",
            "Notifications from the database triggers, and payloads that could not be parsed.",
            [
                (
                    f"sum by (kind) (rate(prebuildd_events_received_total{{{SERVICE}}}"
                    "[$__rate_interval]))",
                    "{{kind}}",
                ),
                (
                    f"sum(rate(prebuildd_events_invalid_total{{{SERVICE}}}[$__rate_interval]))",
                    "invalid",
                ),
            ],
            unit="ops",
        ),
    ]


def health() -> list[cog.Builder[model.Panel]]:
    return [
        timeline(
            "Listener connected",
            "Each replica's LISTEN connection (also what /readyz reports).",
            [(f"max by (instance) (prebuildd_listener_connected{{{SERVICE}}})", "{{instance}}")],
            flag_mapping(("down", "red"), ("up", "green")),
            width=8,
        ),
        graph(
            "Listener reconnects",
            "LISTEN connections re-established after a loss; each one triggers a full sweep.",
            [
                (
                    f"sum by (instance) (increase(prebuildd_listener_reconnects_total{{{SERVICE}}}"
                    "[$__rate_interval]))",
                    "{{instance}}",
                )
            ],
        ),
        graph(
            "Since the last successful reconcile",
            "Per replica, seconds since a reconcile last succeeded (or since the start). A "
            "healthy replica reconciles every template at least every sweep interval; the "
            "PrebuilddNoReconcile alert fires past 3 minutes when there is work.",
            [
                (
                    f"time() - max by (instance) (prebuildd_last_successful_reconcile_timestamp"
                    f"_seconds{{{SERVICE}}})",
                    "{{instance}}",
                )
            ],
            unit="s",
        ),
        graph(
            "Event source",
            "Triggers of prebuildd on Coder's tables that do not fire (missing, disabled), and "
            "templates on which the periodic sweep found work that no event announced: both "
            "stay at 0 on a healthy deployment (PrebuilddEventTriggersMissing, "
            "PrebuilddSweepFoundUnannouncedWork).",
            [
                (
                    f"max by (state) (prebuildd_event_triggers_missing{{{SERVICE}}})",
                    "triggers {{state}}",
                ),
                (
                    f"sum(increase(prebuildd_sweep_found_work_total{{{SERVICE}}}"
                    "[$__rate_interval]))",
                    "sweep found unannounced work",
                ),
            ],
        ),
        graph(
            "Errors / s by kind",
            "Reconcile errors by where they happened (preset: one preset's savepoint rolled "
            "back; template: a reconcile crashed; database: the database failed; sweep: a "
            "sweep's listing failed, retried after 1, 2, 4... s up to 30 s), and invalid "
            "preset or schedule settings met while planning (counted, then a safe fallback).",
            [
                (
                    f"sum by (kind) (rate(prebuildd_reconcile_errors_total{{{SERVICE}}}"
                    "[$__rate_interval]))",
                    "reconcile {{kind}}",
                ),
                (
                    f"sum by (kind) (rate(prebuildd_input_errors_total{{{SERVICE}}}"
                    "[$__rate_interval]))",
                    "input {{kind}}",
                ),
            ],
            unit="ops",
        ),
    ]


def build() -> model.Dashboard:
    dashboard = (
        db.Dashboard("prebuildd")
        .uid(UID)
        .description(
            "Prebuilt Coder workspace pools kept warm by prebuildd: pools per preset, "
            "demand (claims, misses, forecast), reconciles, event lag, listener and errors. "
            "Alerts and runbooks: deploy/prometheus/prebuildd-rules.yaml, docs/operations.md."
        )
        .tags(["prebuildd", "coder", "prebuilds"])
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .variables(variables())
    )
    sections = [
        ("Overview", overview()),
        ("Pools", pools()),
        ("Creates, failures, claims", lifecycle()),
        ("Demand", demand()),
        ("Reconciler", reconciler()),
        ("Listener and errors", health()),
    ]
    for title, panels in sections:
        dashboard = dashboard.with_row(db.Row(title))
        for panel in panels:
            dashboard = dashboard.with_panel(panel)
    built = dashboard.build()
    # Stable ids (Grafana would otherwise assign them on load), in layout order.
    for number, item in enumerate(built.panels or [], start=1):
        item.id_val = number
    return built


def render() -> str:
    """The dashboard as the JSON text committed next to this script."""
    data = json.loads(json.dumps(build(), cls=JSONEncoder))
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
