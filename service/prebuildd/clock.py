"""The database's clock, as this host sees it: the time base of plans and timers.

Every instant prebuildd compares is one of Coder's timestamps (a build's `created_at`, a
workspace's age, a schedule's hour), written by Coder's servers and PostgreSQL. Comparing them
with this host's wall clock would shift TTL expiry, backoff and schedule boundaries by the
host's skew: an hour fast expires prebuilds an hour early. So:

* a reconcile plans at the database's `now()` (read in the snapshot's pipeline, no extra round
  trip) and its writes record that same instant;
* its timers (`Plan.next_attention`, in the database's time) become queue delays against a
  `DatabaseClock`: one reading of the server's `clock_timestamp()` anchored on this host's
  monotonic clock, so `now(m)` is the database's time at monotonic instant `m`, whatever the
  host's wall clock says and however it is stepped.

A reading reaches us a little after the server took it, so `now(m)` runs behind the server by
that one-way latency (a millisecond or so): timers fire that much late, never early. The
monotonic clock drifts from the server's by parts per million, and every reconcile takes a
fresh reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class DatabaseClock:
    """The server's clock (`at`) read when this host's monotonic clock showed `monotonic`."""

    at: datetime
    monotonic: float

    def now(self, monotonic: float) -> datetime:
        """The database's time at monotonic instant `monotonic` (time.monotonic())."""
        return self.at + timedelta(seconds=monotonic - self.monotonic)

    def seconds_until(self, when: datetime, monotonic: float) -> float:
        """How long from monotonic instant `monotonic` until the database's clock shows `when`."""
        return (when - self.now(monotonic)).total_seconds()
