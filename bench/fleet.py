"""A realistic, Coder-shaped fleet in a fresh database, seeded set-based; reusable by benches.

    from bench._server import bench_server
    from bench.fleet import SCALES, ensure_fleet, template_id

    with bench_server() as server:
        db = ensure_fleet(server, "reaction", SCALES["reaction"], reuse=True)
        url = server.url(db)                  # read-only use; write on server.clone(db, ...)
        tpl = template_id(1)                  # deterministic ids: template n, version, preset

The shape of one template is fixed by `FleetSpec` (see bench/sql/fleet.sql for what each
count means); every template has the same shape, so a fleet only grows in width. Template
numbers start at 1; version `spec.versions` is the active one; preset numbers start at 1 per
version. Templates with n mod drift_every == 1 (template 1 among them) have one create, one
delete and one cancel to do; all others are steady.

`ensure_fleet(..., reuse=True)` keeps a seeded database between runs, keyed by the spec and
the seeding SQL: rerunning a bench skips minutes of seeding. A reused database is migrated
again (new prebuildd indexes apply) but never reseeded. Benches that write work on a clone.

By default the fleet sits on prebuildd's own subset of Coder's schema (what `migrate` installs
into an empty database); `ensure_fleet(..., base=BaseSchema(...))` seeds it on a schema the
bench loads first instead -- Coder's real dump.sql (bench/coder_snapshot.py).

Run alone to seed and print counts:  python -m bench.fleet --scale spec --reuse
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import psycopg

from bench._server import BenchServer, bench_server, print_server
from bench._sql import bench_query, file_text
from prebuildd import seed as coder_rows
from prebuildd.migrate import migrate
from prebuildd.queries import read_sql_file

Log = Callable[[str], None]

# Statements of one chunk of templates, in order (named blocks of bench/sql/fleet.sql): which
# rows the chunk holds, then the builder of Coder rows writes them, table by table.
_CHUNK_STEPS = (
    "chunk_templates",
    "chunk_versions",
    "chunk_presets",
    "chunk_workspaces",
    "chunk_builds",
    "insert_templates",
    "insert_versions",
    "insert_presets",
    "insert_preset_parameters",
    "insert_schedules",
    "insert_workspaces",
    "insert_builds",
    "insert_agents",
)


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """Shape of a fleet. `workspaces` is the target row count of `workspaces` (deleted ones
    included); what the prebuild pools do not use becomes ordinary user workspaces."""

    templates: int
    workspaces: int
    versions: int = 3
    active_presets: int = 5
    old_presets: int = 5
    # Per active preset; desired_instances = ready + not_ready + starting.
    ready: int = 2
    not_ready: int = 1
    starting: int = 1
    failed: int = 1
    history: int = 2
    claimed: int = 2
    claimed_builds: int = 4
    user_builds: int = 4
    drift_every: int = 10
    schedule_every: int = 4
    organizations: int = 3

    @property
    def desired(self) -> int:
        return self.ready + self.not_ready + self.starting

    @property
    def presets(self) -> int:
        return self.templates * (self.active_presets + (self.versions - 1) * self.old_presets)

    @property
    def prebuild_workspaces_per_template(self) -> int:
        per_preset = (
            self.ready + self.not_ready + self.starting + self.failed + self.history + self.claimed
        )
        return self.active_presets * per_preset

    @property
    def user_workspaces_per_template(self) -> int:
        per_template = self.workspaces // max(self.templates, 1)
        return max(0, per_template - self.prebuild_workspaces_per_template)

    @property
    def users(self) -> int:
        owned = self.templates * (self.user_workspaces_per_template + self.active_presets)
        return max(10, owned // 3)

    def describe(self) -> str:
        return (
            f"{self.templates:,} templates x {self.versions} versions, "
            f"{self.presets:,} presets ({self.templates * self.active_presets:,} on active "
            f"versions, desired {self.desired} each), ~{self.workspaces:,} workspaces"
        )

    def key(self) -> str:
        """Fingerprint of what a seeded database holds: spec, seeding SQL (the fleet's and the
        builder's) and base schema."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        digest.update(file_text("fleet.sql").encode())
        digest.update(read_sql_file("seed", "coder_rows.sql").encode())
        digest.update(read_sql_file("schema", "coder_subset.sql").encode())
        return digest.hexdigest()[:12]


# Named fleets. `spec` is the SPEC's section 7 fleet; `reaction` the (also the 5,000
# preset sweep); `scale-10`/`scale-10k` differ only in width (same per-template shape).
_SCALE_SHAPE = FleetSpec(templates=1, workspaces=40, active_presets=3, old_presets=1)
SCALES: Mapping[str, FleetSpec] = {
    "tiny": FleetSpec(templates=3, workspaces=60, versions=2, active_presets=2, old_presets=1,
                      drift_every=2, schedule_every=3),
    "quick": FleetSpec(templates=50, workspaces=3_000),
    "reaction": FleetSpec(templates=1_000, workspaces=50_000, active_presets=3, old_presets=1),
    "spec": FleetSpec(templates=1_000, workspaces=124_000),
    # Issue 11: 5,000 templates / 60,000 presets / ~495,000 workspaces (Coder's cycle: ~10 min).
    "spec-5k": FleetSpec(templates=5_000, workspaces=495_000, active_presets=4, old_presets=4),
    "scale-10": replace(_SCALE_SHAPE, templates=10, workspaces=10 * 40),
    "scale-10k": replace(_SCALE_SHAPE, templates=10_000, workspaces=10_000 * 40),
    "scale-quick-10": replace(_SCALE_SHAPE, templates=10, workspaces=10 * 40),
    "scale-quick-1k": replace(_SCALE_SHAPE, templates=1_000, workspaces=1_000 * 40),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Deterministic ids (same derivation as bench/sql/fleet.sql: md5(label)::uuid)
# ---------------------------------------------------------------------------------------------


def _md5_uuid(label: str) -> uuid.UUID:
    return uuid.UUID(hashlib.md5(label.encode()).hexdigest())


def template_id(n: int) -> uuid.UUID:
    return _md5_uuid(f"bench-template-{n}")


def version_id(n: int, v: int) -> uuid.UUID:
    return _md5_uuid(f"bench-version-{n}-{v}")


def preset_id(n: int, v: int, p: int) -> uuid.UUID:
    return _md5_uuid(f"bench-preset-{n}-{v}-{p}")


def user_id(u: int) -> uuid.UUID:
    return _md5_uuid(f"bench-user-{u}")


def organization_id(o: int) -> uuid.UUID:
    return _md5_uuid(f"bench-org-{o}")


def is_drifting(spec: FleetSpec, n: int) -> bool:
    return spec.drift_every > 0 and n % spec.drift_every == 1 % spec.drift_every


def steady_template(spec: FleetSpec) -> int:
    """A template number with nothing to do (no drift)."""
    return next(n for n in range(1, spec.templates + 1) if not is_drifting(spec, n))


# ---------------------------------------------------------------------------------------------
# Seeding
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeedReport:
    seconds: float
    vacuum_seconds: float
    counts: dict[str, int]


def seed(url: str, spec: FleetSpec, *, chunk: int = 500, log: Log = print) -> SeedReport:
    """Seed `spec` into a freshly migrated database, then VACUUM ANALYZE it.

    One transaction per `chunk` templates (bounded temporary tables, visible progress). As a
    superuser, triggers and foreign-key checks are skipped while seeding (the rows are
    consistent by construction; `integrity` verifies it).
    """
    started = time.monotonic()
    params = _params(spec)
    with psycopg.connect(url) as conn:
        fast = _fast_path(conn)
        conn.execute(bench_query("seeding_in_memory"))
        coder_rows.install(conn)  # for this session: committed with the first chunk
        conn.execute(bench_query("fleet_organizations"), params)
        conn.execute(bench_query("fleet_users"), params)
        conn.commit()
        for first in range(1, spec.templates + 1, chunk):
            last = min(first + chunk - 1, spec.templates)
            conn.execute(bench_query("seeding_without_jit"))
            if fast:
                conn.execute(bench_query("seeding_without_triggers"))
            for step in _CHUNK_STEPS:
                conn.execute(bench_query(step), {**params, "first": first, "last": last})
            conn.commit()
            log(f"  seeded templates {first:,}-{last:,} ({time.monotonic() - started:.1f} s)")
    seeded = time.monotonic() - started
    vacuum_started = time.monotonic()
    vacuum_analyze(url)
    vacuumed = time.monotonic() - vacuum_started
    return SeedReport(seeded, vacuumed, counts(url))


def _params(spec: FleetSpec) -> dict[str, Any]:
    params: dict[str, Any] = asdict(spec)
    params["users"] = spec.users
    params["user_workspaces"] = spec.user_workspaces_per_template
    return params


def _fast_path(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(bench_query("is_superuser")).fetchone()
    return bool(row and row[0])


def vacuum_analyze(url: str) -> None:
    """What autovacuum would have done to a live database: statistics, visibility map."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(bench_query("vacuum_analyze"))


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(bench_query("fleet_counts")).fetchall()
    return {str(what): int(n) for what, n in rows}


def integrity(url: str) -> dict[str, int]:
    """Dangling references per kind (all 0 for a correct seed)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(bench_query("fleet_integrity")).fetchall()
    return {str(what): int(n) for what, n in rows}


@dataclass(frozen=True, slots=True)
class BaseSchema:
    """A Coder schema loaded into the empty database before `migrate` and seeding.

    `load(url)` writes the schema and the rows Coder's migrations leave as data; `after_seed`
    undoes anything `load` relaxed for the builder. `key` fingerprints what `load` writes
    (part of the database's name, so a different schema never reuses a fleet).
    """

    key: str
    load: Callable[[str], None]
    after_seed: Callable[[str], None]


def ensure_fleet(
    server: BenchServer,
    name: str,
    spec: FleetSpec,
    *,
    reuse: bool,
    log: Log = print,
    base: BaseSchema | None = None,
) -> str:
    """Name of a database holding `spec`: reused when asked and complete, else (re)seeded.

    With `base`, on that schema instead of the subset `migrate` installs."""
    key = spec.key()
    if base is not None:
        key = hashlib.sha256(f"{key} {base.key}".encode()).hexdigest()[:12]
    dbname = f"bench_{name.replace('-', '_')}_{key}"
    marker = f"prebuildd bench fleet {key} complete"
    url = server.url(dbname)
    if reuse and server.exists(dbname) and server.comment(dbname) == marker:
        migrate(url)  # new prebuildd indexes reach reused fleets too
        log(f"fleet {name}: reusing database {dbname} ({spec.describe()})")
        return dbname
    log(f"fleet {name}: seeding database {dbname} ({spec.describe()})")
    # Fleets of this name seeded with other parameters or SQL are stale: free their disk.
    prefix = f"bench_{name.replace('-', '_')}_"
    for stale in server.matching(f"^{prefix}[0-9a-f]{{12}}(_[a-z]+)?$"):
        server.drop(stale)
    server.create(dbname)
    if base is not None:
        base.load(url)
    migrate(url)
    report = seed(url, spec, log=log)
    if base is not None:
        base.after_seed(url)
    server.set_comment(dbname, marker)
    log(
        f"fleet {name}: seeded in {report.seconds:.1f} s + VACUUM ANALYZE "
        f"{report.vacuum_seconds:.1f} s: {format_counts(report.counts)}"
    )
    return dbname


def format_counts(found: Mapping[str, int]) -> str:
    return ", ".join(f"{what} {n:,}" for what, n in found.items())


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="quick")
    parser.add_argument("--reuse", action="store_true", help="keep/reuse a seeded database")
    parser.add_argument("--check", action="store_true", help="also verify references")
    args = parser.parse_args()
    spec = SCALES[args.scale]
    with bench_server() as server:
        print_server(server)
        dbname = ensure_fleet(server, args.scale, spec, reuse=args.reuse)
        print(format_counts(counts(server.url(dbname))))
        if args.check:
            print(format_counts(integrity(server.url(dbname))))


if __name__ == "__main__":
    main()
