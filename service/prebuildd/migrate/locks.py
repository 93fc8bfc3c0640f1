"""How `migrate` and `--uninstall` wait for locks: never queue Coder behind one.

DDL on a table waits for the transactions using it, and every query on that table after the
DDL waits behind the DDL: one long report on `workspaces` and a plain `DROP TRIGGER` would
stall all of Coder's writes to it. So every transactional step runs with a short
`lock_timeout` (`LockPolicy`) and, when it gives up, is retried after a jittered backoff until
a total budget is spent; Coder's statements wait at most one timeout behind us. Then
`MigrationLockTimeout` names the step and the old transactions holding locks, and nothing of
that step was applied: rerunning the command continues where it stopped.

CREATE / DROP INDEX CONCURRENTLY are different: they take a lock that Coder's reads and
writes never conflict with, then wait by design for every transaction older than themselves
(any table), which a 200 ms lock_timeout would turn into a failure whenever Coder has a
transaction longer than that. They run with the whole budget as their lock_timeout instead:
Coder's reads and writes carry on; only DDL and VACUUM on that one table wait for the build.

Concurrent migrations serialise on the session advisory lock `MIGRATION_LOCK_KEY`, taken on a
session named `APPLICATION_NAME`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from prebuildd.migrate.errors import MigrationError
from prebuildd.queries import query

log = logging.getLogger("prebuildd.migrate")

Connection = psycopg.Connection[TupleRow]
T = TypeVar("T")

# pg_advisory_lock key shared by every `prebuildd migrate` / `--uninstall`: the ASCII bytes of
# "prebuild" read as a big-endian bigint. Coder's own advisory lock ids are small integers.
MIGRATION_LOCK_KEY = 0x7072656275696C64
_LOCK_POLL_SECONDS = 0.1

# application_name of the sessions of `migrate` and `--uninstall`.
APPLICATION_NAME = "prebuildd migrate"


class MigrationLockTimeout(MigrationError):
    """A step could not get its locks within the budget; nothing of that step was applied."""

    def __init__(self, step: str, what_happened: str, holders: list[str]) -> None:
        self.step = step
        listing = "".join(f"\n  - {holder}" for holder in holders) or (
            "\n  - none any more (short transactions held the lock)"
        )
        super().__init__(
            f"{step}: {what_happened}. Nothing of this step was applied and the database is "
            "consistent: run the same command again. If it keeps failing, look for long or "
            "idle transactions on Coder's tables (pg_stat_activity: state 'idle in "
            "transaction', old xact_start; pg_locks) and end them, or allow more time with "
            "--lock-retry-for. Transactions older than this step that hold locks on tables "
            f"of this schema:{listing}"
        )


@dataclass(frozen=True, slots=True)
class LockPolicy:
    """How long DDL may keep Coder waiting, and how long to keep trying.

    `timeout`: lock_timeout of each attempt, i.e. the longest a Coder statement can queue
    behind one of our DDL statements. `retry_for`: total time one step keeps retrying (with
    jittered exponential backoff between attempts) before `MigrationLockTimeout`; also the
    lock_timeout of CREATE / DROP INDEX CONCURRENTLY, which wait for old transactions by design.
    """

    timeout: timedelta = timedelta(milliseconds=200)
    retry_for: timedelta = timedelta(seconds=60)

    def __post_init__(self) -> None:
        if self.timeout <= timedelta(0):
            raise ValueError("the lock timeout must be positive (0 would wait forever)")
        if self.retry_for < timedelta(0):
            raise ValueError("the retry budget cannot be negative")

    @property
    def timeout_setting(self) -> str:
        return _milliseconds(self.timeout)

    @property
    def concurrent_index_setting(self) -> str:
        return _milliseconds(max(self.retry_for, self.timeout))


def _milliseconds(span: timedelta) -> str:
    return f"{max(1, round(span.total_seconds() * 1000))}ms"


# Backoff between attempts: doubling from the first to the cap, each drawn from [d/2, d] so
# that two migrations (or a migration and an autovacuum) do not retry in lockstep.
_BACKOFF_FIRST_SECONDS = 0.05
_BACKOFF_CAP_SECONDS = 2.0


def connect(conninfo: str) -> Connection:
    # Named, so that an operator looking at pg_stat_activity / pg_locks sees who waits (unless
    # the connection string names the session itself).
    if conninfo_to_dict(conninfo).get("application_name"):
        return psycopg.connect(conninfo, autocommit=True)
    return psycopg.connect(conninfo, autocommit=True, application_name=APPLICATION_NAME)


@contextmanager
def migration_lock(conn: Connection) -> Iterator[None]:
    # Polled rather than waited for: see the `try_migration_lock` query for the deadlock a
    # blocking wait would cause with CREATE INDEX CONCURRENTLY.
    while not scalar(conn, "try_migration_lock", {"key": MIGRATION_LOCK_KEY}):
        time.sleep(_LOCK_POLL_SECONDS)
    try:
        yield
    finally:
        if not conn.closed:
            conn.execute(query("release_migration_lock"), {"key": MIGRATION_LOCK_KEY})


def scalar(conn: Connection, name: str, params: Mapping[str, object] | None = None) -> object:
    row = conn.execute(query(name), params).fetchone()
    return None if row is None else row[0]


def with_lock_retries(
    conn: Connection, step: str, policy: LockPolicy, attempt: Callable[[], T]
) -> T:
    """`attempt()` (one transaction that sets the lock timeout itself), retried while it fails
    on a lock timeout, until `policy.retry_for` is spent."""
    started = time.monotonic()
    first_attempt_at = datetime.now(UTC)
    delay = _BACKOFF_FIRST_SECONDS
    attempts = 0
    while True:
        attempts += 1
        try:
            return attempt()
        except errors.LockNotAvailable:
            elapsed = time.monotonic() - started
            pause = random.uniform(delay / 2, delay)
            if elapsed + pause > policy.retry_for.total_seconds():
                what = (
                    f"gave up after {attempts} attempt(s) over {elapsed:.1f}s, each waiting at "
                    f"most {policy.timeout_setting} for its locks (so that Coder's statements "
                    "never queued behind ours for longer)"
                )
                raise MigrationLockTimeout(
                    step, what, _old_lock_holders(conn, first_attempt_at)
                ) from None
            log.info(
                "lock busy, retrying",
                extra={"step": step, "attempt": attempts, "retry_in_s": round(pause, 3)},
            )
            time.sleep(pause)
            delay = min(delay * 2, _BACKOFF_CAP_SECONDS)


def _old_lock_holders(conn: Connection, since: datetime) -> list[str]:
    rows = conn.execute(query("old_lock_holders"), {"since": since}).fetchall()
    return [
        f"pid {pid} ({application}, {state}, transaction open for {age}) holds locks on {relations}"
        for pid, application, state, age, relations in rows
    ]


@contextmanager
def concurrent_index_timeout(conn: Connection, step: str, policy: LockPolicy) -> Iterator[None]:
    """Statements of a no-transaction file (CREATE / DROP INDEX CONCURRENTLY) wait for older
    transactions by design; bound that wait by the whole budget instead of one short timeout.
    Session-level: each autocommit statement is its own transaction."""
    started = datetime.now(UTC)
    conn.execute(query("set_session_lock_timeout"), {"timeout": policy.concurrent_index_setting})
    try:
        yield
    except errors.LockNotAvailable:
        what = (
            f"a CONCURRENTLY index statement waited {policy.concurrent_index_setting} for older "
            "transactions to finish and gave up (Coder's reads and writes were never blocked; "
            "an index left half-built is dropped by the next run)"
        )
        raise MigrationLockTimeout(step, what, _old_lock_holders(conn, started)) from None
    finally:
        if not conn.closed and not conn.broken:
            conn.execute(query("reset_session_lock_timeout"))
