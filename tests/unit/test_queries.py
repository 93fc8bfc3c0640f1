"""The named-query loader: blocks, names, and the verbs reported on database spans."""

from __future__ import annotations

import pytest

from prebuildd.queries import operation, parse_blocks, query, query_names


def test_blocks_are_split_by_name_lines() -> None:
    text = "-- name: one\nSELECT 1;\n\n-- name: two\n-- a comment\nUPDATE t SET x = 1;\n"
    assert parse_blocks(text) == {"one": "SELECT 1;", "two": "-- a comment\nUPDATE t SET x = 1;"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SELECT 1;", "no '-- name:' block"),
        ("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;", "defined twice"),
        ("-- name: a\n\n-- name: b\nSELECT 2;", "is empty"),
    ],
)
def test_malformed_files_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_blocks(text, "x.sql")


def test_every_shipped_query_loads_and_unknown_names_fail_clearly() -> None:
    names = query_names()
    assert {"snapshot_prebuilds", "create_prebuilds", "claim_prebuild", "ping"} <= names
    for name in names:
        assert query(name).as_string(None).strip()
    with pytest.raises(KeyError, match="no SQL query named 'nope'"):
        query("nope")


@pytest.mark.parametrize(
    ("name", "verb"),
    [
        ("snapshot_prebuilds", "SELECT"),
        ("claim_prebuild", "UPDATE"),  # a CTE that updates and inserts, then selects
        ("provisioner_insert_agent", "INSERT"),
        ("provisioner_complete_job", "UPDATE"),
        # The service's writes are calls of prebuildd's SECURITY DEFINER functions.
        ("create_prebuilds", "SELECT"),
        ("listen_events", "LISTEN"),
    ],
)
def test_operation_names_the_statement_verb(name: str, verb: str) -> None:
    assert operation(name) == verb
