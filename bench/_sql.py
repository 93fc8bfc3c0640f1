"""Named SQL of the benchmarks (bench/sql/*.sql), loaded like the service's own queries.

The blocks use the same `-- name:` convention and loader rules as sql/queries/, so a bench
never builds SQL text in Python either. Statements that need an identifier (a database
name) are composed with psycopg.sql where they are used.
"""

from __future__ import annotations

import functools
from pathlib import Path

from psycopg import sql

from prebuildd.queries import merge_files

SQL_DIR = Path(__file__).resolve().parent / "sql"


@functools.cache
def _blocks() -> dict[str, str]:
    paths = sorted(SQL_DIR.glob("*.sql"))
    return merge_files((p.name, p.read_text(encoding="utf-8")) for p in paths)


def bench_query(name: str) -> sql.SQL:
    """The named bench query, ready for `cursor.execute(bench_query("x"), params)`."""
    try:
        text = _blocks()[name]
    except KeyError:
        raise KeyError(f"no SQL query named {name!r} under bench/sql/") from None
    # Text from files of this repository, never from input: as trusted as a literal.
    return sql.SQL(text)


def bench_sql_text(name: str) -> str:
    """Raw text of a block (to fingerprint the seeding SQL for --reuse)."""
    return _blocks()[name]


def file_text(name: str) -> str:
    return (SQL_DIR / name).read_text(encoding="utf-8")
