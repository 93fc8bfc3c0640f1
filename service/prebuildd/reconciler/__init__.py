"""One reconcile of a set of templates: lock, read, plan, execute, record.

The reconciler is deliberately thin. Everything it decides comes from `plan.plan_preset`, every
byte it reads or writes goes through `store`. What it owns is the transaction shape:

* one transaction per reconcile, READ COMMITTED;
* first statement: per-template transaction-level advisory locks (`store.lock_templates`).
  Templates held by another replica are skipped; the holder receives the same notifications
  and runs its own follow-up, and we retry shortly as a safety net. Every read that decides a
  create runs *after* the lock is held, so two replicas can never both fill one deficit;
* with `--max-pending-prebuild-jobs`, the advisory locks of the organizations' provisioner
  tag sets the plans create for are taken next, all at once and in ascending order, before
  any preset's actions (prebuildd.throttle; sql/functions/throttle.sql): the pending jobs
  counted under them stay true until the commit;
* each action runs in a savepoint of its own: a failing action is rolled back, logged and
  counted, and stops neither the preset's other actions nor other presets. Only one failure
  condemns a preset (stores `validation_failed`): a create the create function refuses as
  invalid input, with its dedicated SQLSTATE (`store.is_invalid_preset`). Everything else --
  a unique violation because someone queued a build on the same prebuild meanwhile, a lock
  or statement timeout, a deadlock -- says nothing about the preset's input: it is retried by
  the next reconcile of the template (its next event, timer or the periodic sweep);
* provisioner wake-ups are `pg_notify` calls inside that transaction, delivered at commit, so
  a crash mid-cycle leaves neither half-written prebuilds nor phantom postings;
* time is the database's: the snapshot's pipeline reads `now()`, the plans are made at it and
  the writes record it, and the outcome carries the clock reading that the dispatcher turns
  `next_attention` into timers with (prebuildd.clock). A host whose wall clock is off neither
  expires prebuilds early nor misses a schedule boundary.

A dry run (`prebuildd reconcile --dry-run`, `prebuildd status`) is read-only instead: a READ ONLY
transaction that takes no lock at all (no per-template lock, not Coder's lock 7), so neither
replicas nor Coder's loop ever wait for an operator who looks. It reads and plans every
template it is given, and reports from pg_locks which of them a reconcile holds right now
(`Outcome.reconciling`) and whether Coder's own loop is in a cycle.

The reconciler's parts:

* cycle.py          `Reconciler`: the transaction, locked or read-only, and the plans;
* throttle_step.py  the creates cut to the room under the pending-jobs cap, the line stored;
* actions.py        the plans' actions run, each in a savepoint, results and failures recorded;
* outcome.py        `Cause` and `Outcome`: why a reconcile ran, what it saw and did.
"""

from prebuildd.reconciler.cycle import LOCK_WITH_READS_MAX, Reconciler, utc_now
from prebuildd.reconciler.outcome import Cause, Outcome

__all__ = ["LOCK_WITH_READS_MAX", "Cause", "Outcome", "Reconciler", "utc_now"]
