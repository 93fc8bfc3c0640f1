"""bench/coder_snapshot.py's pure parts: reading sqlc query files, translating their
placeholders for psycopg, and the checks and verdict that make the bench fail.

The SQL below is written for these tests (sqlc's conventions, not Coder's queries).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# bench/ lives at the repository root, which is not on sys.path under the pytest script.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.coder_snapshot import (
    SNAPSHOT_READS,
    TARGET_RATIO,
    QueryNotFound,
    Ratio,
    SqlcQuery,
    bind,
    expected_rows,
    find_statements,
    row_problems,
    snapshot_arguments,
    sqlc_blocks,
    to_psycopg,
)
from bench.fleet import SCALES

QUERY_FILE = """\
-- name: ListThings :many
-- ListThings returns things; it doesn't mind quotes.
SELECT id, name FROM things
WHERE owner = @owner_id::uuid
  AND (kind = sqlc.narg('kind')::text OR sqlc.narg('kind') IS NULL);

-- A comment that belongs to the next query, written before its name line.
-- name: CountThings :one
SELECT count(*) FROM things WHERE created_at >= sqlc.arg(since)::timestamptz;

-- name: Positional :exec
UPDATE things SET name = $2 WHERE id = $1;
"""


def _query(text: str, name: str = "Q") -> SqlcQuery:
    return SqlcQuery(name, ":many", text)


def test_blocks_run_from_their_name_line_to_the_next() -> None:
    blocks = sqlc_blocks(QUERY_FILE)
    assert list(blocks) == ["ListThings", "CountThings", "Positional"]
    assert blocks["ListThings"].command == ":many"
    assert blocks["CountThings"].command == ":one"
    assert blocks["CountThings"].text.startswith("SELECT count(*)")
    # The next query's leading comment ends up in this block: dropped with the comments.
    assert "belongs to the next query" in blocks["ListThings"].text
    assert "belongs to the next query" not in to_psycopg(blocks["ListThings"]).text


def test_sqlc_placeholders_become_psycopg_named_parameters() -> None:
    blocks = sqlc_blocks(QUERY_FILE)
    listed = to_psycopg(blocks["ListThings"])
    assert listed.params == ("owner_id", "kind")  # a name used twice is one parameter
    assert "owner = %(owner_id)s::uuid" in listed.text
    assert "kind = %(kind)s::text OR %(kind)s IS NULL" in listed.text
    assert "--" not in listed.text and "sqlc" not in listed.text
    assert not listed.text.endswith(";")
    counted = to_psycopg(blocks["CountThings"])
    assert counted.params == ("since",)
    assert "created_at >= %(since)s::timestamptz" in counted.text
    positional = to_psycopg(blocks["Positional"])
    assert positional.params == ("p2", "p1")
    assert positional.text == "UPDATE things SET name = %(p2)s WHERE id = %(p1)s"


def test_quoted_text_and_operators_are_left_alone_and_percent_is_escaped() -> None:
    stmt = to_psycopg(
        _query(
            "SELECT 'user@example.com', 'it''s 100% -- not a comment', \"@col\", "
            "tags @> '{}'::jsonb, $fn$ @x $fn$, 5 % 2 /* @skipped */ FROM t WHERE a = @a;"
        )
    )
    assert stmt.params == ("a",)
    assert "'user@example.com'" in stmt.text
    assert "'it''s 100%% -- not a comment'" in stmt.text
    assert '"@col"' in stmt.text
    assert "tags @> '{}'::jsonb" in stmt.text
    assert "$fn$ @x $fn$" in stmt.text
    assert "5 %% 2" in stmt.text and "skipped" not in stmt.text
    assert stmt.text.endswith("WHERE a = %(a)s")


@pytest.mark.parametrize(
    "text",
    ["SELECT 'open", "SELECT 1 /* open", "SELECT 1; SELECT 2;", "-- only a comment\n"],
)
def test_malformed_or_multiple_statements_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        to_psycopg(_query(text))


def test_a_missing_or_duplicated_query_is_not_found() -> None:
    files = {"a.sql": QUERY_FILE}
    found = find_statements(files, ["CountThings"])
    assert found["CountThings"].params == ("since",)
    with pytest.raises(QueryNotFound, match="GetRunningPrebuiltWorkspaces"):
        find_statements(files, ["CountThings", "GetRunningPrebuiltWorkspaces"])
    with pytest.raises(QueryNotFound, match=r"defined in a\.sql and in b\.sql"):
        find_statements({"a.sql": QUERY_FILE, "b.sql": QUERY_FILE}, ["CountThings"])
    with pytest.raises(QueryNotFound, match="unterminated quote"):
        find_statements({"a.sql": "-- name: Broken :one\nSELECT 'open;\n"}, ["Broken"])


def test_bind_refuses_a_parameter_it_was_not_given_or_one_the_query_lacks() -> None:
    stmt = to_psycopg(sqlc_blocks(QUERY_FILE)["CountThings"])
    assert bind(stmt, {"since": 1}) == {"since": 1}
    with pytest.raises(QueryNotFound):
        bind(stmt, {})
    with pytest.raises(QueryNotFound):
        bind(stmt, {"since": 1, "lookback": 2})


def test_arguments_are_coders_defaults() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 1, 1, tzinfo=UTC)
    args = snapshot_arguments(now)
    assert args["GetTemplatePresetsWithPrebuilds"] == {"template_id": None}
    assert args["GetPresetsBackoff"] == {"lookback": now - timedelta(hours=1)}
    assert args["GetPresetsAtFailureLimit"] == {"hard_limit": 3}
    assert set(args) <= {r.name for r in SNAPSHOT_READS}
    assert len(SNAPSHOT_READS) == 7


def test_rows_that_do_not_match_the_fleet_are_problems() -> None:
    spec = SCALES["spec"]
    good = {r.name: 1 for r in SNAPSHOT_READS} | expected_rows(spec)
    assert expected_rows(spec)["GetTemplatePresetsWithPrebuilds"] == 15_000
    assert expected_rows(spec)["GetRunningPrebuiltWorkspaces"] == 15_000
    assert row_problems(good, spec) == []
    # Reads the fleet may leave empty.
    assert row_problems(good | {"GetPresetsBackoff": 0}, spec) == []
    assert row_problems(good | {"CountInProgressPrebuilds": 0}, spec) == [
        "CountInProgressPrebuilds returned no rows"
    ]
    assert row_problems(good | {"GetRunningPrebuiltWorkspaces": 0}, spec) == [
        "GetRunningPrebuiltWorkspaces returned 0 rows, the fleet has 15,000"
    ]
    missing = dict(good)
    del missing["GetActivePresetPrebuildSchedules"]
    assert row_problems(missing, spec) == ["GetActivePresetPrebuildSchedules did not run"]


def test_the_verdict_comes_from_the_measured_ratio_and_the_checks() -> None:
    assert Ratio("x", 10_000.0, 400.0).met(checks_passed=True)
    assert Ratio("x", 10_000.0, 10_000.0 / TARGET_RATIO).met(checks_passed=True)
    assert not Ratio("x", 10_000.0, 600.0).met(checks_passed=True)
    assert not Ratio("x", 10_000.0, 400.0).met(checks_passed=False)
    assert not Ratio("x", 10_000.0, 0.0).met(checks_passed=True)
    assert "25.0x; >= 20x: MET" in Ratio("sweep", 10_000.0, 400.0).line(True)
    assert "MISSED" in Ratio("sweep", 10_000.0, 400.0).line(False)
