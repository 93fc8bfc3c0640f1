"""Named SQL, loaded from `.sql` files: no SQL text is ever assembled in Python.

Each file under `sql/queries/` holds blocks that start with a `-- name: <identifier>` line and
run until the next such line. Parameters use psycopg's `%(name)s` placeholders, so every value
travels as a bound parameter.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from psycopg import sql

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def sql_root() -> Traversable:
    """The `sql/` tree: package data in an installed wheel, the repository folder in a checkout."""
    packaged = resources.files("prebuildd") / "sql"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "sql"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError("prebuildd's sql/ directory is missing from the installation")


def read_sql_file(*parts: str) -> str:
    """Text of one file below `sql/`, e.g. read_sql_file("triggers", "0001_notify.sql")."""
    node = sql_root()
    for part in parts:
        node = node / part
    return node.read_text(encoding="utf-8")


def parse_blocks(text: str, source: str = "<string>") -> dict[str, str]:
    """Split a file into its named blocks; duplicate or missing names are programming errors."""
    matches = list(_NAME.finditer(text))
    if not matches and text.strip():
        raise ValueError(f"{source}: no '-- name:' block found")
    blocks: dict[str, str] = {}
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        name = match.group(1)
        if name in blocks:
            raise ValueError(f"{source}: query {name!r} is defined twice")
        if not body:
            raise ValueError(f"{source}: query {name!r} is empty")
        blocks[name] = body
    return blocks


def merge_files(files: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Blocks of several (file name, text) pairs; a name defined in two files is an error."""
    found: dict[str, str] = {}
    for source, text in files:
        for name, body in parse_blocks(text, source).items():
            if name in found:
                raise ValueError(f"{source}: query {name!r} is also defined elsewhere")
            found[name] = body
    return found


@functools.cache
def _all_queries() -> dict[str, str]:
    folder = sql_root() / "queries"
    entries = sorted((e for e in folder.iterdir() if e.name.endswith(".sql")), key=lambda e: e.name)
    return merge_files((e.name, e.read_text(encoding="utf-8")) for e in entries)


def query(name: str) -> sql.SQL:
    """The named query, ready for `cursor.execute(query("x"), params)`."""
    try:
        text = _all_queries()[name]
    except KeyError:
        raise KeyError(f"no SQL query named {name!r} under sql/queries/") from None
    # The text comes from files shipped with the package, never from input: it is as trusted
    # as a literal, which is what psycopg's LiteralString annotation asks for.
    return sql.SQL(text)


_OPERATION = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|LISTEN)\b", re.MULTILINE | re.IGNORECASE)


@functools.cache
def operation(name: str) -> str:
    """The statement's verb (OTel `db.operation.name`). A query that writes (even from a CTE
    whose final statement is a SELECT of what it wrote) is named by its first write; else the
    first verb starting a line (the project's SQL puts each verb first on its line).
    """
    verbs = [m.group(1).upper() for m in _OPERATION.finditer(_all_queries()[name])]
    writes = [v for v in verbs if v != "SELECT"]
    return (writes or verbs or ["QUERY"])[0]


def query_names() -> frozenset[str]:
    return frozenset(_all_queries())
