"""The PostgreSQL server a benchmark runs against, and database housekeeping on it.

Chosen in this order:

1. `PREBUILDD_BENCH_DATABASE_URL`: a server you give (a role that may CREATE DATABASE; a
   superuser seeds faster, see bench/fleet.py);
2. a throwaway PostgreSQL cluster made with the system's `initdb`/`pg_ctl` (PostgreSQL 15 on
   the reference machine), data under `PREBUILDD_BENCH_DIR` (default /var/tmp/prebuildd-bench)
   so seeded fleets survive between runs (`--reuse`). PostgreSQL refuses to run as root, so
   as root the binaries run as the `postgres` system user. Settings are the defaults except
   those in `CLUSTER_SETTINGS` (printed by every bench);
3. the embedded PostgreSQL package the service ships (PostgreSQL 18).

The cluster is stopped on exit when this process started it; its data directory stays
(`rm -rf /var/tmp/prebuildd-bench` removes every seeded fleet).

Benches sharing the machine would measure each other: `bench_server()` holds an exclusive
lock (`measure.lock` in the bench directory) for the whole run, so benches started at the same
time run one after the other (the waiting one says so). That also keeps one bench from
stopping the cluster under another.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench._sql import bench_query

BENCH_DIR = Path(os.environ.get("PREBUILDD_BENCH_DIR", "/var/tmp/prebuildd-bench"))

# Only what a bench box needs to differ from a default install. fsync stays on (write benches
# compare commit costs); synchronous_commit=off lets a commit return before its WAL flush,
# which removes the disk's flush latency from every figure -- stated in docs/benchmarks.md.
CLUSTER_SETTINGS: Mapping[str, str] = {
    "shared_buffers": "256MB",
    "synchronous_commit": "off",
    # Seeding writes gigabytes: avoid checkpoints in the middle of it.
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "maintenance_work_mem": "256MB",
    # bench/trigger_overhead.py keeps 64 writers open on each of up to three databases.
    "max_connections": "300",
    "listen_addresses": "''",
}

# Printed for every server, whoever configured it.
REPORTED_SETTINGS = (
    "server_version",
    "shared_buffers",
    "work_mem",
    "fsync",
    "synchronous_commit",
    "jit",
    "random_page_cost",
    "effective_cache_size",
)


@dataclass(frozen=True, slots=True)
class BenchServer:
    admin_url: str
    # given | cluster | embedded
    kind: str
    version: str
    where: str

    def url(self, dbname: str) -> str:
        params = conninfo_to_dict(self.admin_url)
        params["dbname"] = dbname
        return make_conninfo("", **params)

    def describe(self) -> str:
        return f"PostgreSQL {self.version} ({self.kind}: {self.where})"

    # -- databases ------------------------------------------------------------------------

    def exists(self, dbname: str) -> bool:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            row = conn.execute(bench_query("database_exists"), {"name": dbname}).fetchone()
        return bool(row and row[0])

    def comment(self, dbname: str) -> str | None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            row = conn.execute(bench_query("database_comment"), {"name": dbname}).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def matching(self, pattern: str) -> list[str]:
        """Databases whose name matches the regular expression."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            rows = conn.execute(bench_query("databases_matching"), {"pattern": pattern})
            return [str(row[0]) for row in rows.fetchall()]

    def set_comment(self, dbname: str, text: str) -> None:
        stmt = sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(dbname), sql.Literal(text)
        )
        self._admin(stmt)

    def create(self, dbname: str) -> None:
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))

    def drop(self, dbname: str) -> None:
        stmt = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        self._admin(stmt.format(sql.Identifier(dbname)))

    def clone(self, source: str, target: str) -> str:
        """A copy of `source` (file level: seconds, not a reseed). Returns its URL."""
        self.drop(target)
        strategy = sql.SQL(" STRATEGY file_copy") if self._major() >= 15 else sql.SQL("")
        stmt = sql.SQL("CREATE DATABASE {} TEMPLATE {}{}").format(
            sql.Identifier(target), sql.Identifier(source), strategy
        )
        # An autovacuum worker may still be in the source database; it is told to leave.
        for attempt in range(20):
            try:
                self._admin(stmt)
                break
            except psycopg.errors.ObjectInUse:
                if attempt == 19:
                    raise
                time.sleep(0.5)
        return self.url(target)

    def settings(self) -> dict[str, str]:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            rows = conn.execute(
                bench_query("server_settings"), {"names": list(REPORTED_SETTINGS)}
            ).fetchall()
        return {str(name): str(value) for name, value in rows}

    def _major(self) -> int:
        match = re.match(r"(\d+)", self.version)
        return int(match.group(1)) if match else 0

    def _admin(self, stmt: sql.Composed) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(stmt)


def print_server(server: BenchServer) -> None:
    print(f"server: {server.describe()}")
    shown = ", ".join(f"{k}={v}" for k, v in server.settings().items() if k != "server_version")
    print(f"settings: {shown}")


# ---------------------------------------------------------------------------------------------
# Choosing and starting a server
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def bench_server() -> Iterator[BenchServer]:
    with exclusive_machine(), _pick_server() as server:
        yield server


@contextlib.contextmanager
def exclusive_machine() -> Iterator[None]:
    """One bench at a time on this machine (released when the process ends, even killed)."""
    _prepare_dir(BENCH_DIR)
    with open(BENCH_DIR / "measure.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("another bench holds this machine; waiting for it to finish ...", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _pick_server() -> Iterator[BenchServer]:
    given = os.environ.get("PREBUILDD_BENCH_DATABASE_URL")
    if given:
        yield BenchServer(given, "given", _server_version(given), "PREBUILDD_BENCH_DATABASE_URL")
        return
    binaries = find_pg_binaries()
    if binaries is not None:
        with _cluster(binaries) as server:
            yield server
        return
    with _embedded() as server:
        yield server


def find_pg_binaries() -> Path | None:
    """Directory holding initdb and pg_ctl: PATH, /usr/local/bin, then Debian's layout
    (newest PostgreSQL 15 first, as in the SPEC's measurements, else the newest found)."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    candidates.append(Path("/usr/local/bin"))
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_major_of_dir, reverse=True)
    candidates += [d for d in debian if _major_of_dir(d) == 15] + debian
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    return None


def _major_of_dir(path: Path) -> int:
    name = path.parent.name
    return int(name) if name.isdigit() else 0


@contextlib.contextmanager
def _cluster(bin_dir: Path) -> Iterator[BenchServer]:
    major = _binary_major(bin_dir)
    data_dir = BENCH_DIR / f"pg{major}"
    if not (data_dir / "PG_VERSION").exists():
        _run_pg(
            bin_dir / "initdb",
            "-D", str(data_dir), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--locale=C",
        )  # fmt: skip
    started_here = not _postmaster_alive(data_dir)
    if started_here:
        options = " ".join(f"-c {k}={v}" for k, v in CLUSTER_SETTINGS.items())
        options += f" -c unix_socket_directories='{data_dir}'"
        log_file = BENCH_DIR / f"pg{major}.log"
        _run_pg(
            bin_dir / "pg_ctl",
            "-D", str(data_dir), "-l", str(log_file), "-w", "-t", "120", "-o", options, "start",
        )  # fmt: skip
    url = make_conninfo("", dbname="postgres", user="postgres", host=str(data_dir))
    try:
        where = f"throwaway cluster {data_dir}, binaries {bin_dir}"
        yield BenchServer(url, "cluster", _server_version(url), where)
    finally:
        if started_here:
            _run_pg(bin_dir / "pg_ctl", "-D", str(data_dir), "-m", "fast", "-w", "stop")


@contextlib.contextmanager
def _embedded() -> Iterator[BenchServer]:
    from prebuildd.embedded import EmbeddedPostgres

    data_dir = BENCH_DIR / "embedded"
    server = EmbeddedPostgres(data_dir)
    url = server.start()
    try:
        yield BenchServer(url, "embedded", _server_version(url), f"embedded package {data_dir}")
    finally:
        server.stop()


def _binary_major(bin_dir: Path) -> int:
    out = subprocess.run(
        [str(bin_dir / "pg_ctl"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"(\d+)", out)
    return int(match.group(1)) if match else 0


def _prepare_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        # The server runs as `postgres`: it owns the directory with the cluster and its log.
        user = pwd.getpwnam("postgres")
        os.chown(path, user.pw_uid, user.pw_gid)


def _run_pg(binary: Path, *args: str) -> None:
    # PostgreSQL refuses to run as root; as root, run its tools as the `postgres` user.
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    result = subprocess.run(
        [*prefix, str(binary), *args],
        cwd=str(BENCH_DIR),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{binary.name} failed ({result.returncode}): {result.stderr.strip()}"
            f"\n(see {BENCH_DIR}/*.log)"
        )


def _postmaster_alive(data_dir: Path) -> bool:
    try:
        pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, 0)
    except PermissionError:
        return True  # alive, owned by another user
    except (OSError, ValueError, IndexError):
        return False
    return True


def _server_version(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.info.parameter_status("server_version") or "unknown"
