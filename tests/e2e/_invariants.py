"""The invariants of the multi-replica churn drill, checked on every sample of the pools.

Vocabulary (per preset, read from the database in one statement, see `_db.POOLS`):

* live     -- unclaimed, not deleted prebuilds whose latest build is a `start` that has not
              failed or been canceled (pending and running count: they fill the pool);
* target   -- `desired_instances` while the preset is active (its version is the template's
              active version, the template is live), else 0; a negative count reads as 0;
* creates  -- first builds the prebuilds user ever started for the preset (every committed
              create, whatever happened to it since);
* claims   -- those of them now owned by a user; failed -- those whose job failed.

I1  Never overfilled. At every sample t:
        live(t) <= max(target(s) for the samples s in the last WINDOW seconds)
    The window lets the reconcile that follows a lowered target (or a promotion away) run
    after the change commits; it is generous because a replica killed while holding a
    template's lock delays the others by their busy-retry (2 s). Deletes already queued
    need no allowance: their latest build is a `delete`, so they are not live.

I2  No deficit filled twice. At every sample:
        creates <= raises + claims + failed
    where `raises` sums every increase of the target between consecutive samples, starting
    from 0 (so it includes the initial desired count, desired raises, and a promotion that
    makes the preset active). Every create must answer one unit of deficit, and in this drill
    deficit has no other source (no TTLs, so no expiry). Two replicas filling the same deficit,
    or a retried create that had in fact committed, breaks it. It only holds if every target
    change is sampled, so the drill samples right after each change it commits.

The checker is pure: the drill feeds it samples and fails on the first violation.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from uuid import UUID

from _db import Pool


@dataclass(slots=True)
class _History:
    # (time, target) samples covering the window: the newest one older than the window is
    # kept too, since its target was still in force when the window began.
    targets: deque[tuple[float, int]] = field(default_factory=deque)
    last_target: int = 0
    raises: int = 0


@dataclass(slots=True)
class InvariantChecker:
    window: float = 10.0
    samples: int = 0
    _presets: dict[UUID, _History] = field(default_factory=dict)

    def observe(self, at: float, pools: Mapping[UUID, Pool]) -> list[str]:
        """Record one sample taken at monotonic time `at`; return the violations it shows."""
        self.samples += 1
        violations: list[str] = []
        for preset_id, pool in pools.items():
            history = self._presets.setdefault(preset_id, _History())
            ceiling = self._record_target(history, at, pool.target)
            if pool.live > ceiling:
                violations.append(
                    f"I1 preset {preset_id}: {pool.live} live > {ceiling}, the largest target "
                    f"of the last {self.window:g}s ({pool})"
                )
            budget = history.raises + pool.claims + pool.failed
            if pool.creates > budget:
                violations.append(
                    f"I2 preset {preset_id}: {pool.creates} creates > {budget} = raises "
                    f"{history.raises} + claims {pool.claims} + failed {pool.failed}"
                )
        return violations

    def _record_target(self, history: _History, at: float, target: int) -> int:
        if target > history.last_target:
            history.raises += target - history.last_target
        history.last_target = target
        targets = history.targets
        targets.append((at, target))
        while len(targets) > 1 and targets[1][0] <= at - self.window:
            targets.popleft()
        return max(t for _, t in targets)

    def raises(self, preset_id: UUID) -> int:
        return self._presets[preset_id].raises
