"""The benchmark seeder (bench/fleet.py) builds the fleet it promises, and the service can plan it.

A smoke test of the seeding SQL at the smallest scale: row counts follow from the spec, every
reference resolves, the deterministic ids are the rows' ids, and a dry-run sweep plans every
preset without invalid input -- the drifting templates with exactly their create, delete and
cancel. No timing here: figures come from the benches themselves (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

# bench/ lives at the repository root, which is not on sys.path under the pytest script.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.fleet import (
    SCALES,
    counts,
    integrity,
    is_drifting,
    preset_id,
    seed,
    template_id,
)

from prebuildd.model import CancelPending, Create, Delete, PlanConfig
from prebuildd.sweep import sweep_once

SPEC = SCALES["tiny"]


def _quiet(_: str) -> None:
    pass


def test_tiny_fleet_has_the_promised_rows(db_url: str) -> None:
    report = seed(db_url, SPEC, log=_quiet)

    per_template = SPEC.prebuild_workspaces_per_template + SPEC.user_workspaces_per_template
    drifting = sum(is_drifting(SPEC, n) for n in range(1, SPEC.templates + 1))
    live_pool = SPEC.active_presets * (SPEC.ready + SPEC.not_ready + SPEC.starting + SPEC.failed)
    assert report.counts["templates"] == SPEC.templates
    assert report.counts["template_versions"] == SPEC.templates * SPEC.versions
    assert report.counts["presets"] == SPEC.presets
    assert report.counts["presets on active versions"] == SPEC.templates * SPEC.active_presets
    # Each drifting template adds one running and one pending prebuild on the old version.
    assert report.counts["workspaces"] == SPEC.templates * per_template + 2 * drifting
    live = report.counts["workspaces of the prebuilds user (live)"]
    assert live == SPEC.templates * live_pool + 2 * drifting
    assert report.counts["workspace_agents"] == report.counts["workspace_resources"] > 0
    assert set(integrity(db_url).values()) == {0}
    assert counts(db_url) == report.counts


def test_dry_run_sweep_plans_the_seeded_drift(db_url: str) -> None:
    seed(db_url, SPEC, log=_quiet)

    outcomes = asyncio.run(sweep_once(db_url, PlanConfig(), dry_run=True))

    plans = [plan for outcome in outcomes for plan in outcome.plans]
    assert not any(outcome.failed_presets for outcome in outcomes)
    assert [plan.errors for plan in plans if plan.errors] == []
    expected_presets = {
        preset_id(n, v, p)
        for n in range(1, SPEC.templates + 1)
        for v in range(1, SPEC.versions + 1)
        for p in range(1, (SPEC.active_presets if v == SPEC.versions else SPEC.old_presets) + 1)
    }
    assert {plan.preset.id for plan in plans} == expected_presets
    for n in range(1, SPEC.templates + 1):
        kinds = sorted(
            type(action).__name__
            for plan in plans
            if plan.preset.template_id == template_id(n)
            for action in plan.actions
        )
        if is_drifting(SPEC, n):
            assert kinds == sorted(k.__name__ for k in (Create, Delete, CancelPending)), n
        else:
            assert kinds == [], n
