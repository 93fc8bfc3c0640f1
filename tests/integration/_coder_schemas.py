"""Databases shaped like Coder schemas that prebuildd must accept, built from the subset.

None of Coder's text is used: every shape starts from sql/schema/coder_subset.sql (written for
prebuildd) and removes what a given schema lacks.

* `coder_like(url, release)`: the subset without the columns Coder added after `release`
  (e.g. "v2.25.0"), as in that release's dump.sql (checked against Coder's history; the
  column -> migration -> first release table is docs/coder-compatibility.md).
* `required_only(url)`: the subset cut down to exactly migrate.REQUIRED_COLUMNS and, for the
  enum types prebuildd names, exactly migrate.REQUIRED_ENUM_LABELS: whatever prebuildd runs
  in production must work there (tests/integration/test_schema_contract.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from prebuildd.migrate import BASE_SCHEMA, REQUIRED_COLUMNS, REQUIRED_ENUM_LABELS
from prebuildd.queries import read_sql_file

Conn = psycopg.Connection[Any]

# Columns of the subset that Coder added after v2.25.0, by the release that first had them
# (migration numbers in docs/coder-compatibility.md).
FIRST_RELEASE: Mapping[tuple[str, str], str] = {
    ("template_versions", "has_external_agent"): "v2.26.0",
    ("provisioner_jobs", "logs_length"): "v2.26.0",
    ("provisioner_jobs", "logs_overflowed"): "v2.26.0",
    ("workspaces", "group_acl"): "v2.26.0",
    ("workspaces", "user_acl"): "v2.26.0",
    ("workspace_builds", "has_external_agent"): "v2.26.0",
    ("template_version_presets", "last_invalidated_at"): "v2.29.0",
    ("users", "is_service_account"): "v2.32.0",
    ("templates", "disable_module_cache"): "v2.32.0",
}


def _version(release: str) -> tuple[int, ...]:
    return tuple(int(part) for part in release.lstrip("v").split("."))


def install_subset(url: str) -> None:
    """What a Coder deployment looks like to prebuildd: Coder's tables, none of our objects."""
    folder, name = BASE_SCHEMA.split("/")
    with psycopg.connect(url) as conn:
        conn.execute(sql.SQL(read_sql_file(folder, name)))


def absent_in(release: str) -> list[tuple[str, str]]:
    """The subset's columns that Coder's `release` (e.g. "v2.25.0") does not have yet."""
    return [
        column
        for column, first in FIRST_RELEASE.items()
        if _version(first) > _version(release)
    ]


def coder_like(url: str, release: str) -> list[tuple[str, str]]:
    """The subset as Coder's `release` has it; returns the columns it removed."""
    install_subset(url)
    absent = absent_in(release)
    with psycopg.connect(url) as conn:
        for table, column in absent:
            # No CASCADE: nothing of the subset may depend on a column the release lacks.
            conn.execute(_drop_column(table, column))
    return absent


def _drop_column(table: str, column: str, *, cascade: bool = False) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} DROP COLUMN {}{}").format(
        sql.Identifier(table),
        sql.Identifier(column),
        sql.SQL(" CASCADE" if cascade else ""),
    )


# ---------------------------------------------------------------------------------------------
# Only what production needs
# ---------------------------------------------------------------------------------------------

# provisioner_jobs.job_status is a stored generated column whose expression names every label
# of its type: the type cannot be swapped under it. Its labels stay complete.
_KEEP_ALL_LABELS = {"provisioner_job_status"}
# Enum types of kept columns that prebuildd never names (it copies their values): in the
# minimal database they get one label no query could spell, so a query naming any label of
# theirs fails there.
UNNAMEABLE_LABEL = "minimal_db_only"

_RELATIONS: LiteralString = """
SELECT c.relname, c.relkind::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v', 'm')
"""

_COLUMNS: LiteralString = """
SELECT c.relname, a.attname,
       -- Columns a kept generated column is computed from stay: Coder computes job_status.
       EXISTS (
           SELECT 1
           FROM pg_depend d
           JOIN pg_attribute g ON g.attrelid = d.objid AND g.attnum = d.objsubid
           WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
             AND d.refobjid = c.oid AND d.refobjsubid = a.attnum
             AND g.attgenerated = 's' AND g.attname = ANY(%(kept)s::text[])
       ) AS feeds_generated
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname = %(table)s
  AND a.attnum > 0 AND NOT a.attisdropped
"""

_CODER_TRIGGERS: LiteralString = """
SELECT t.tgname, c.relname
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT t.tgisinternal AND n.nspname = current_schema()
"""

_FUNCTIONS: LiteralString = """
SELECT p.oid::regprocedure::text
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = current_schema()
"""

_ENUM_COLUMNS: LiteralString = """
SELECT t.typname, c.relname, a.attname
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
WHERE n.nspname = current_schema() AND c.relkind = 'r' AND t.typtype = 'e'
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY 1, 2, 3
"""

_UNUSED_ENUMS: LiteralString = """
SELECT t.typname
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = current_schema() AND t.typtype = 'e'
  AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.atttypid = t.oid AND NOT a.attisdropped)
"""


def required_only(url: str) -> None:
    """The subset with only REQUIRED_COLUMNS (plus what Coder's generated job_status is
    computed from) and, for every enum type a kept column uses, only its REQUIRED_ENUM_LABELS.

    Coder's own triggers, functions and views go first: they name columns prebuildd does not
    use (a real Coder has them, and they are not prebuildd's to satisfy).
    """
    install_subset(url)
    with psycopg.connect(url) as conn:
        for name, table in conn.execute(_CODER_TRIGGERS).fetchall():
            conn.execute(
                sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(name), sql.Identifier(table))
            )
        for (signature,) in conn.execute(_FUNCTIONS).fetchall():
            # regprocedure text: qualified and quoted by PostgreSQL itself.
            conn.execute(sql.SQL("DROP FUNCTION {}").format(sql.SQL(signature)))
        for name, kind in conn.execute(_RELATIONS).fetchall():
            if name not in REQUIRED_COLUMNS:
                # CASCADE: views over views; none of them is prebuildd's to keep.
                what = sql.SQL("VIEW" if kind == "v" else "TABLE")
                conn.execute(
                    sql.SQL("DROP {} IF EXISTS {} CASCADE").format(what, sql.Identifier(name))
                )
        for table, wanted in REQUIRED_COLUMNS.items():
            rows = conn.execute(_COLUMNS, {"table": table, "kept": list(wanted)}).fetchall()
            for column, feeds_generated in [(r[1], r[2]) for r in rows]:
                if column not in wanted and not feeds_generated:
                    # CASCADE: constraints over an unneeded column (a foreign key on a key
                    # prebuildd never joins on) go with it.
                    conn.execute(_drop_column(table, column, cascade=True))
        _shrink_enums(conn)


def _shrink_enums(conn: Conn) -> None:
    for (name,) in conn.execute(_UNUSED_ENUMS).fetchall():
        conn.execute(sql.SQL("DROP TYPE {}").format(sql.Identifier(name)))
    columns: dict[str, list[tuple[str, str]]] = {}
    for type_name, table, column in conn.execute(_ENUM_COLUMNS).fetchall():
        columns.setdefault(str(type_name), []).append((str(table), str(column)))
    for type_name, users in columns.items():
        if type_name in _KEEP_ALL_LABELS:
            continue
        labels = REQUIRED_ENUM_LABELS.get(type_name) or (UNNAMEABLE_LABEL,)
        full = f"{type_name}__full"
        ident, full_ident = sql.Identifier(type_name), sql.Identifier(full)
        conn.execute(sql.SQL("ALTER TYPE {} RENAME TO {}").format(ident, full_ident))
        conn.execute(
            sql.SQL("CREATE TYPE {} AS ENUM ({})").format(
                ident, sql.SQL(", ").join(sql.Literal(label) for label in labels)
            )
        )
        for table, column in users:
            col = sql.Identifier(column)
            conn.execute(
                sql.SQL(
                    "ALTER TABLE {table} ALTER COLUMN {col} DROP DEFAULT,"
                    " ALTER COLUMN {col} TYPE {type} USING {col}::text::{type}"
                ).format(table=sql.Identifier(table), col=col, type=ident)
            )
        conn.execute(sql.SQL("DROP TYPE {}").format(full_ident))


# ---------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------


class EventInbox:
    """A session LISTENing on prebuildd's channel; `kinds()` returns the event kinds committed
    since the last call (a sentinel NOTIFY marks the end, so nothing is waited for in vain)."""

    CHANNEL = "prebuildd_events"

    def __init__(self, url: str) -> None:
        self.conn: Conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.CHANNEL)))
        self._sentinels = 0

    def payloads(self) -> list[dict[str, Any]]:
        self._sentinels += 1
        token = f"sentinel-{self._sentinels}"
        self.conn.execute("SELECT pg_notify(%s, %s)", (self.CHANNEL, token))
        received: list[dict[str, Any]] = []
        for notify in self.conn.notifies(timeout=60.0):  # returns at the sentinel
            if notify.payload == token:
                return received
            received.append(json.loads(notify.payload))
        raise AssertionError(f"the sentinel never arrived; received {received}")

    def kinds(self) -> set[str]:
        return {str(payload["k"]) for payload in self.payloads()}

    def close(self) -> None:
        self.conn.close()
