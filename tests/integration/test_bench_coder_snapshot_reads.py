"""bench/coder_snapshot.py runs sqlc queries for real: translated placeholders bind on a real
server, in one REPEATABLE READ, READ ONLY transaction, and the fleet's rows come back.

The query file here is written for this test in sqlc's conventions (named after the seven
reads of Coder's snapshot, not Coder's SQL: the bench reads that from a Coder checkout, which
the test suite does not have). The fleet is bench/fleet.py's `tiny` one on the migrated
schema.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

# bench/ lives at the repository root, which is not on sys.path under the pytest script.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.coder_snapshot import (
    SNAPSHOT_READS,
    Checkout,
    coder_connection,
    coder_snapshot,
    find_statements,
)
from bench.fleet import SCALES, seed

SPEC = SCALES["tiny"]

QUERIES = """\
-- name: GetTemplatePresetsWithPrebuilds :many
-- Every preset with a prebuild count (the NULL filter: all templates).
SELECT p.id
FROM template_version_presets AS p
JOIN template_versions AS v ON v.id = p.template_version_id
WHERE p.desired_instances IS NOT NULL
  AND (v.template_id = sqlc.narg('template_id')::uuid OR sqlc.narg('template_id') IS NULL);

-- name: GetActivePresetPrebuildSchedules :many
-- One row only inside a repeatable-read, read-only transaction.
SELECT 1
WHERE current_setting('transaction_isolation') = 'repeatable read'
  AND current_setting('transaction_read_only') = 'on';

-- name: GetRunningPrebuiltWorkspaces :many
SELECT id
FROM workspaces
WHERE owner_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid  -- the prebuilds user
  AND name LIKE 'prebuild-%' AND NOT deleted;

-- name: CountInProgressPrebuilds :many
SELECT 1 WHERE 7 % 4 = 3;

-- name: CountPendingNonActivePrebuilds :many
SELECT 1 WHERE false;

-- name: GetPresetsBackoff :many
SELECT id FROM workspaces WHERE created_at >= @lookback::timestamptz AND false;

-- name: GetPresetsAtFailureLimit :many
SELECT generate_series(1, @hard_limit::int);
"""


def _checkout() -> Checkout:
    statements = find_statements({"q.sql": QUERIES}, [r.name for r in SNAPSHOT_READS])
    return Checkout("test", "test", "0" * 40, "", statements)


async def _snapshot(url: str) -> dict[str, int]:
    conn = await coder_connection(url)
    try:
        rows, seconds = await coder_snapshot(conn, _checkout())
    finally:
        await conn.close()
    assert set(seconds) == set(rows)
    return rows


def test_translated_queries_run_in_one_repeatable_read_transaction(db_url: str) -> None:
    report = seed(db_url, SPEC, log=lambda _: None)

    rows = asyncio.run(_snapshot(db_url))

    assert rows == {
        "GetTemplatePresetsWithPrebuilds": SPEC.presets,
        "GetActivePresetPrebuildSchedules": 1,
        "GetRunningPrebuiltWorkspaces": report.counts["workspaces of the prebuilds user (live)"],
        "CountInProgressPrebuilds": 1,
        "CountPendingNonActivePrebuilds": 0,
        "GetPresetsBackoff": 0,
        "GetPresetsAtFailureLimit": 3,
    }
