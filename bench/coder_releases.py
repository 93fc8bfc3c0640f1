"""Verify prebuildd against the real schema of each Coder release, from your own Coder checkout.

For every release (a git ref of a Coder repository: by default each vX.Y.0 tag from v2.25.0,
the first release with Coder's prebuild pause switch), this script:

1. loads that release's `coderd/database/dump.sql` (read with `git show` from the checkout you
   point it at; nothing of it is copied anywhere) into a fresh scratch database;
2. writes what a deployment has before prebuildd's first sweep (bench/sql/coder_releases.sql:
   an organization, the prebuilds system user, a template admin, the hard-limit notification
   template, two templates with presets, three failed creates);
3. runs `prebuildd migrate` as the owner, applies deploy/sql/prebuildd-role.sql and, connected
   as a login role that holds only those grants (unless --as-owner), the service's and the
   operator's tools through prebuildd's own CLI:
   `reconcile --once` (creates; hard limit and its notification), `status`, a promotion
   then a provisioner's success of the old version's create (announced: its version is no
   longer active), then `reconcile --once` again (delete, cancel, create), Coder's
   claim and preset edit, `pause`/`resume`, `invalidate` (expected to fail cleanly where the
   release lacks last_invalidated_at), the triggers' events throughout, and finally
   `migrate --uninstall` (nothing of prebuildd left, Coder's writes still fine).

It prints one line per release, `verified` or the step that failed and why, and exits
non-zero if any release failed or none was checked. Results are recorded by hand in
docs/coder-compatibility.md.

    PYTHONPATH=service python -m bench.coder_releases --coder-repo PATH
        [--ref REF[=LABEL] ...] [--admin-url URL] [--as-owner] [--keep]

Without --admin-url the scratch databases live on the benches' throwaway PostgreSQL cluster
(bench/_server.py); with it, on that server (a role that may CREATE DATABASE).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import secrets
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench._common import print_header
from bench._server import bench_server, print_server
from bench._sql import bench_query
from prebuildd.cli import EXIT_ERROR, EXIT_OK
from prebuildd.cli import main as prebuildd_cli
from prebuildd.migrate import OLDEST_CODER_RELEASE, migrate

Conn = psycopg.Connection[Any]

DUMP_PATH = "coderd/database/dump.sql"
ROLE_SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "sql" / "prebuildd-role.sql"
ROLE = "prebuildd"
CHANNEL = "prebuildd_events"
ADMIN = UUID("c0de0000-0000-4000-8000-0000000000a1")
PRESET_V1 = UUID("c0de0000-0000-4000-8000-0000000000d1")
PRESET_V2 = UUID("c0de0000-0000-4000-8000-0000000000d2")
PRESET_FAILING = UUID("c0de0000-0000-4000-8000-0000000000d3")
# The events of the steps below. Not build_inserted: every build here is the service's own
# (prebuildd.execute_actions), and its own writes are not echoed back (issue 11) -- checked.
# job_status comes from a provisioner failing a create (a success is not announced).
ECHOES = {"build_inserted"}
EXPECTED_EVENTS = {
    "job_status",
    "agent_ready",
    "version_promoted",
    "claimed",
    "preset_changed",
    "settings_changed",
}


class CheckFailed(Exception):
    """A step's outcome is not what prebuildd promises."""


@dataclass
class Result:
    label: str
    ref: str
    step: str = ""
    error: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return not self.error

    def line(self) -> str:
        verdict = "verified" if self.verified else f"FAILED at {self.step}: {self.error}"
        notes = f" ({'; '.join(self.notes)})" if self.notes else ""
        return f"{self.label:10s} {verdict}{notes}"


# ---------------------------------------------------------------------------------------------
# Releases
# ---------------------------------------------------------------------------------------------


def _version(tag: str) -> tuple[int, ...] | None:
    match = re.fullmatch(r"v(\d+)\.(\d+)\.0", tag)
    return (int(match.group(1)), int(match.group(2))) if match else None


def default_refs(repo: str) -> list[tuple[str, str]]:
    """Every vX.Y.0 tag of the checkout from OLDEST_CODER_RELEASE on, oldest first."""
    tags = _git(repo, "tag", "--list", "v*.*.0").split()
    oldest = _version(OLDEST_CODER_RELEASE)
    assert oldest is not None
    found = [(v, t) for t in tags if (v := _version(t)) is not None and v >= oldest]
    return [(tag, tag) for _, tag in sorted(found)]


def _git(repo: str, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", repo, *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise CheckFailed(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _parse_ref(text: str) -> tuple[str, str]:
    ref, _, label = text.partition("=")
    return ref, label or ref


# ---------------------------------------------------------------------------------------------
# One release
# ---------------------------------------------------------------------------------------------


class Events:
    """A LISTENing session; `kinds()` drains what was committed (a sentinel ends the wait)."""

    def __init__(self, url: str) -> None:
        self.conn: Conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        self.seen: set[str] = set()

    def drain(self) -> set[str]:
        token = "coder-releases-sentinel"
        self.conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, token))
        for notify in self.conn.notifies(timeout=10.0):
            if notify.payload == token:
                return self.seen
            self.seen.add(str(json.loads(notify.payload).get("k")))
        raise CheckFailed("the LISTENing session never received its own sentinel")

    def close(self) -> None:
        self.conn.close()


def _cli(url: str, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = prebuildd_cli([args[0], "--database-url", url, "--log-level", "error", *args[1:]])
    return code, out.getvalue()


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def _builds(conn: Conn, preset: UUID) -> list[tuple[Any, ...]]:
    return conn.execute(bench_query("preset_builds"), {"preset": preset}).fetchall()


def _value(conn: Conn, name: str, params: dict[str, Any] | None = None) -> Any:
    row = conn.execute(bench_query(name), params).fetchone()
    return None if row is None else row[0]


def _as_user(url: str, user: str, password: str) -> str:
    params = conninfo_to_dict(url)
    params.update(user=user, password=password)
    return make_conninfo("", **params)


def check_release(url: str, dump: str, result: Result, *, as_role: bool) -> None:
    steps: list[tuple[str, Callable[[], None]]] = []
    # service_url: where the service's and operator's commands connect (the role's login).
    state: dict[str, Any] = {"service_url": url}

    def step(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
        def register(fn: Callable[[], None]) -> Callable[[], None]:
            steps.append((name, fn))
            return fn

        return register

    conn: Conn = psycopg.connect(url, autocommit=True)

    @step("load dump.sql")
    def _load() -> None:
        conn.execute(sql.SQL(dump))  # the operator's own file, run as is

    @step("seed")
    def _seed() -> None:
        with conn.transaction():
            conn.execute(bench_query("seed_world"))

    @step("migrate")
    def _migrate() -> None:
        report = migrate(url)
        _expect(not report.installed_base_schema, "migrate installed its own Coder subset")
        if report.absent_optional:
            result.notes.append("without " + ", ".join(report.absent_optional))
        state["events"] = Events(url)

    @step("role script")
    def _role() -> None:
        if not as_role:
            result.notes.append("as the owner")
            return
        # A file of this repository, run as is (as `psql -f` would).
        conn.execute(sql.SQL(ROLE_SCRIPT.read_text(encoding="utf-8")))
        login, password = f"coder_release_{secrets.token_hex(6)}", secrets.token_urlsafe(16)
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                sql.Identifier(login), sql.Literal(password), sql.Identifier(ROLE)
            )
        )
        state["login"] = login
        state["service_url"] = _as_user(url, login, password)

    @step("reconcile (creates, hard limit)")
    def _first_sweep() -> None:
        code, out = _cli(state["service_url"], "reconcile", "--once")
        _expect(code == EXIT_OK, f"exit {code}: {out.strip()[-300:]}")
        creates = _builds(conn, PRESET_V1)
        _expect(
            [(b[2], b[3]) for b in creates] == [("start", "pending")] * 2,
            f"expected 2 queued creates, found {creates}",
        )
        state["creates"] = creates
        status = _value(conn, "preset_status", {"preset": PRESET_FAILING})
        _expect(status == "hard_limited", f"failing preset is {status!r}")
        notified = _value(conn, "notifications_of", {"user": ADMIN})
        _expect(notified == 2, f"{notified} notification(s) for the template admin, expected 2")

    @step("status")
    def _status() -> None:
        code, out = _cli(state["service_url"], "status")
        _expect(code == EXIT_OK and "release-check" in out, f"exit {code}: {out.strip()[-300:]}")

    @step("reconcile after a promotion (delete, cancel, create)")
    def _second_sweep() -> None:
        built, queued = state["creates"][0], state["creates"][1]
        # Promoted while the create ran: its success is not announced (no success is); the
        # sweep below deletes it.
        with conn.transaction():
            conn.execute(bench_query("promote"))
        with conn.transaction():
            conn.execute(bench_query("provision_succeeded"), {"job": built[4]})
        code, out = _cli(state["service_url"], "reconcile", "--once")
        _expect(code == EXIT_OK, f"exit {code}: {out.strip()[-300:]}")
        after = {(b[0], b[1]): (b[2], b[3]) for b in _builds(conn, PRESET_V1)}
        _expect(after.get((built[0], 2)) == ("delete", "pending"), f"no delete build: {after}")
        _expect(after.get((queued[0], 1)) == ("start", "canceled"), f"not canceled: {after}")
        new = _builds(conn, PRESET_V2)
        _expect([(b[2], b[3]) for b in new] == [("start", "pending")], f"no create: {new}")
        state["new"] = new[0]

    @step("Coder's claim and preset edit, a failed create")
    def _coder_writes() -> None:
        with conn.transaction():
            conn.execute(bench_query("provision_failed"), {"job": state["new"][4]})
        with conn.transaction():
            conn.execute(bench_query("claim"), {"workspace": state["new"][0]})
            conn.execute(bench_query("change_preset"))

    @step("pause / resume")
    def _pause() -> None:
        for command in ("pause", "resume"):
            code, out = _cli(state["service_url"], command)
            _expect(code == EXIT_OK, f"{command}: exit {code}: {out.strip()[-300:]}")

    @step("invalidate")
    def _invalidate() -> None:
        column = {"table": "template_version_presets", "column": "last_invalidated_at"}
        available = bool(_value(conn, "has_column", column))
        code, out = _cli(state["service_url"], "invalidate", "--preset", str(PRESET_V2))
        if available:
            _expect(code == EXIT_OK, f"exit {code}: {out.strip()[-300:]}")
        else:
            _expect(code == EXIT_ERROR, f"without the column: exit {code}, expected an error")
            result.notes.append("invalidate refused as expected")

    @step("events")
    def _events() -> None:
        seen = state["events"].drain()
        missing = EXPECTED_EVENTS - seen
        _expect(not missing, f"no event of kind(s) {sorted(missing)}; got {sorted(seen)}")
        echoed = ECHOES & seen
        _expect(not echoed, f"the service's own writes came back as {sorted(echoed)}")

    @step("migrate --uninstall")
    def _uninstall() -> None:
        state["events"].close()
        code, out = _cli(url, "migrate", "--uninstall")
        _expect(code == EXIT_OK, f"exit {code}: {out.strip()[-300:]}")
        left = _value(conn, "prebuildd_objects_left")
        _expect(left == 0, f"{left} object(s) of prebuildd left")
        with conn.transaction():
            conn.execute(bench_query("change_preset"))

    try:
        for name, fn in steps:
            result.step = name
            try:
                fn()
            except CheckFailed as exc:
                result.error = str(exc)
                return
            except Exception as exc:
                result.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
                traceback.print_exc(file=sys.stderr)
                return
    finally:
        if "events" in state:
            state["events"].close()
        if "login" in state:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (state["login"],),
            )
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(state["login"])))
        conn.close()


# ---------------------------------------------------------------------------------------------
# Databases
# ---------------------------------------------------------------------------------------------


def _with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)


@contextlib.contextmanager
def scratch_database(admin_url: str, label: str, keep: bool) -> Iterator[str]:
    name = "coder_release_" + re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
    ident = sql.Identifier(name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    try:
        yield _with_dbname(admin_url, name)
    finally:
        if not keep:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


@contextlib.contextmanager
def _admin_url(given: str | None) -> Iterator[str]:
    if given:
        yield given
        return
    with bench_server() as server:
        print_server(server)
        yield server.admin_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--coder-repo", required=True, help="a clone of Coder's repository")
    parser.add_argument(
        "--ref",
        action="append",
        default=[],
        metavar="REF[=LABEL]",
        help="a git ref to check (repeatable); default: every vX.Y.0 tag from "
        f"{OLDEST_CODER_RELEASE}",
    )
    parser.add_argument("--admin-url", help="server for the scratch databases")
    parser.add_argument(
        "--as-owner",
        action="store_true",
        help="run the service's commands as the owner instead of the least-privilege role",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch databases")
    args = parser.parse_args()
    print_header("prebuildd against each Coder release's dump.sql")
    refs = [_parse_ref(r) for r in args.ref] or default_refs(args.coder_repo)
    results: list[Result] = []
    with _admin_url(args.admin_url) as admin_url:
        for ref, label in refs:
            result = Result(label, ref)
            results.append(result)
            try:
                dump = _git(args.coder_repo, "show", f"{ref}:{DUMP_PATH}")
            except CheckFailed as exc:
                result.step, result.error = "read dump.sql", str(exc)
            else:
                commit = _git(args.coder_repo, "rev-parse", "--short=10", f"{ref}^{{commit}}")
                result.notes.append(f"commit {commit.strip()}")
                with scratch_database(admin_url, label, args.keep) as url:
                    check_release(url, dump, result, as_role=not args.as_owner)
            print(result.line(), flush=True)
    failed = [r for r in results if not r.verified]
    print(f"\n{len(results) - len(failed)} of {len(results)} release(s) verified")
    if not results:
        print("no release was checked: MISSED")
    sys.exit(1 if failed or not results else 0)


if __name__ == "__main__":
    main()
