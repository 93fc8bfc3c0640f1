"""Freezing a PostgreSQL backend: an open socket that answers nothing (SIGSTOP), as a frozen
server, a stuck backend or a silently dropped NAT entry looks to the client.

Only a backend of a server on this machine can be signaled: the test's embedded server (a Unix
socket URL, a process named `postgres`), as this user or root. When it cannot be, the test
fails, because a frozen-connection test that silently skips proves nothing; outside CI
(`CI=true`), PREBUILDD_TEST_SKIP_FREEZE_TESTS=1 skips it explicitly instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

SKIP_VARIABLE = "PREBUILDD_TEST_SKIP_FREEZE_TESTS"
# Every prebuildd listener's session (prebuildd.listener.APPLICATION_NAME), this database only.
LISTENER_PIDS = (
    "SELECT array_agg(pid) FROM pg_stat_activity"
    " WHERE application_name = 'prebuildd-listener' AND datname = current_database()"
)


def _local_backend(url: str, pid: int) -> bool:
    """Only signal a backend we can be sure is the PostgreSQL process on this machine."""
    host = str(conninfo_to_dict(url).get("host") or "")
    if not host.startswith("/"):
        return False
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    except OSError:
        return False


def _cannot(reason: str) -> None:
    if os.environ.get("CI", "").strip().lower() != "true" and os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(reason)
    pytest.fail(f"{reason}. Outside CI, set {SKIP_VARIABLE}=1 to skip this test explicitly.")


@contextlib.contextmanager
def frozen(url: str, pid: int) -> Iterator[None]:
    """SIGSTOP backend `pid` for the block, SIGCONT after, whatever happens."""
    if not _local_backend(url, pid):
        _cannot("the server's backends are not processes of this machine")
    try:
        os.kill(pid, signal.SIGSTOP)
    except PermissionError:
        _cannot("not allowed to signal the server's backends")
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
