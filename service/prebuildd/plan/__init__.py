"""The pure planner: one preset's snapshot + `now` -> typed actions + when to look again.

No I/O, no clock: the same snapshot at the same `now` always yields an equal Plan. Parity with
Coder's reconciler (coderd/prebuilds/preset_snapshot.go), with these deliberate differences:

- Expired prebuilds of *inactive* presets are deleted too (Coder only deletes the non-expired).
- Pending, never-picked-up jobs of inactive presets are cancelled (CancelPending).
- A preset whose stored status is `hard_limited` goes back to `healthy` once the latest builds
  are no longer all failures (e.g. the limit was raised or the failed prebuilds were removed).
- `validation_failed` is sticky: the planner never overwrites it, because it is set for
  non-retryable input errors that only a new template version can cure.
- Invalid parameters are found *before* anything is written: when a create is due, the
  preset's values are checked against the version's parameters as Coder's builder checks
  them (prebuildd.parameters); an invalid preset gets SetStatus(validation_failed) with the
  reason instead of a Create (Coder stores the same status when its builder refuses).
- Workspace tags are evaluated for each create (prebuildd.workspace_tags); a tag that cannot
  be evaluated holds the preset's creates with the reason (never `validation_failed`: the
  template may be fine, prebuildd only cannot tell).
- Status changes are emitted even while backing off: they record a verdict, they are not
  provisioning work.
- Backoff ends at `now >= backoff_until` (Coder: strictly after), so a wake-up scheduled at
  `backoff_until` finds the preset ready to act.
- Every plan says when it next needs attention (`next_attention`), so time-driven changes are
  scheduled instead of polled.

Beyond Coder: a preset whose (template, name) has an autoscale policy is sized from demand
(prebuildd.autoscale): in `auto` mode the desired count is the forecast's suggestion, never
below the configured count; the suggestion changes at hour boundaries, so such plans ask to be
looked at again at the next one.

The planner's parts, each pure:

* preset.py    `plan_preset`, the entry, and `can_skip`; the plan of an inactive preset;
* active.py    the decision for an active preset (its order of work in its docstring):
               deletes, creates and the checks of their inputs, status changes, the state;
* verdicts.py  expiry, inactivity, backoff and hard limit; sort orders and small helpers.
"""

from prebuildd.plan.preset import can_skip, plan_preset
from prebuildd.plan.verdicts import inactive_reason, is_expired

__all__ = [
    "can_skip",
    "inactive_reason",
    "is_expired",
    "plan_preset",
]
