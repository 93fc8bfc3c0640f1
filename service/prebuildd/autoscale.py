"""Forecast-driven pool sizing, opt-in per (template, preset name): the rule and its bounds.

Pure. The planner asks `size_pool` for the desired count of an active preset; the CLI
(`prebuildd autoscale set`) checks a policy's bounds with `check_bounds` before storing it
(the database function that stores it checks them again, with the preset's existence).

The rule, for a preset whose policy is `forecast` or `auto`:

    suggested = max(configured, clamp(forecast, min, max))
    desired   = suggested in `auto` mode, configured otherwise

`configured` is what the template asks for now (`desired_instances`, or the schedule covering
now). So `auto` never shrinks a pool below what the template configured, and what the forecast
adds never goes beyond `max`. This is the issue's `clamp(max(configured, forecast), min, max)`
everywhere but in one corner: a template configured *above* the policy's `max` keeps its own
count (prebuildd only ever adds to a template admin's decision; `max` bounds the addition).
`forecast` mode computes the same number and only reports it (metric
`prebuildd_prebuilt_workspaces_suggested`, `status`, `reconcile --dry-run`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from prebuildd.forecast import ForecastConfig, empty_history, forecast
from prebuildd.model import AutoscaleMode, AutoscalePolicy, DemandHistory

__all__ = ["PolicyError", "Sizing", "check_bounds", "parse_mode", "size_pool"]


class PolicyError(ValueError):
    """An autoscale policy that cannot be stored; the message says which value is wrong."""


@dataclass(frozen=True, slots=True)
class Sizing:
    """How many prebuilds a preset should have, and why."""

    # What the plan aims for.
    desired: int
    # What the forecast suggests (what `auto` aims for); None without an active policy.
    suggested: int | None = None
    reasons: tuple[str, ...] = ()
    # When the suggestion may change (the next hour boundary); None without a policy.
    next_change: datetime | None = None


def parse_mode(text: str) -> AutoscaleMode:
    try:
        return AutoscaleMode(text)
    except ValueError:
        modes = ", ".join(m.value for m in AutoscaleMode)
        raise PolicyError(f"mode must be one of {modes}, not {text!r}") from None


def check_bounds(min_instances: int, max_instances: int) -> None:
    """Refuse negative bounds and min > max (PolicyError)."""
    if min_instances < 0:
        raise PolicyError(f"--min must be >= 0, not {min_instances}")
    if max_instances < 0:
        raise PolicyError(f"--max must be >= 0, not {max_instances}")
    if min_instances > max_instances:
        raise PolicyError(f"--min ({min_instances}) must not exceed --max ({max_instances})")


def size_pool(
    configured: int,
    policy: AutoscalePolicy | None,
    demand: DemandHistory | None,
    now: datetime,
    config: ForecastConfig | None = None,
) -> Sizing:
    """The desired count of an active preset at `now` (see the module docstring)."""
    if policy is None or policy.mode is AutoscaleMode.OFF:
        return Sizing(configured)
    forecast_of = forecast(demand or empty_history(now, config), now, config)
    bounded = min(max(forecast_of.suggested, policy.min_instances), policy.max_instances)
    suggested = max(configured, bounded)
    reasons = [forecast_of.explain()]
    if configured > policy.max_instances:
        reasons.append(
            f"the template configures {configured}, above the policy's max "
            f"{policy.max_instances}: the template's count is kept"
        )
    if policy.mode is AutoscaleMode.AUTO:
        desired = suggested
        if suggested != configured:
            reasons.append(
                f"auto: desired {configured} -> {suggested} "
                f"(min {policy.min_instances}, max {policy.max_instances})"
            )
    else:
        desired = configured
        if suggested != configured:
            reasons.append(
                f"forecast mode: would aim for {suggested} instead of {configured} "
                f"(min {policy.min_instances}, max {policy.max_instances}); not acting"
            )
    return Sizing(desired, suggested, tuple(reasons), forecast_of.valid_until)
