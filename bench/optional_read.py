"""Does reading the optional column last_invalidated_at by scope cost the reconcile anything?

`snapshot_presets` names template_version_presets.last_invalidated_at without a qualifier
inside a LATERAL subquery, so that it falls back to a NULL on Coder releases that lack the
column (sql/queries/snapshot.sql). This bench runs, side by side in one run and interleaved
round by round, the whole read of a targeted reconcile (the four snapshot statements, with
the generic plans and prepared statements prebuildd.store uses) with the current `snapshot_presets`
and with the statement as it was before (bench/sql/optional_read.sql), each on its own
connection, for the same templates of the SPEC fleet (15 presets per template).

Verdict: both variants return identical rows for every template read (else MISSED: the
comparison would be meaningless), and what the current statement costs more than the previous
one (median of the per-round differences: paired, so the machine's load cancels out) is at
most `TARGET_SHARE` of the whole read. Also printed: both variants' timings, the ratio of
their whole reads, and whether the two plans have the same shape.

    PYTHONPATH=service python -m bench.optional_read [--quick] [--reuse] [--rounds N]
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import time
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql

from bench._common import Stats, common_args, print_header, verdict
from bench._server import bench_server, print_server
from bench._sql import bench_query
from bench.fleet import SCALES, ensure_fleet, template_id
from prebuildd.queries import query

Conn = psycopg.Connection[Any]

# The extra cost of the current presets statement (median of the per-round differences, each
# round reading the same template both ways) as a share of the whole read before: at most
# this much, i.e. in the noise of a targeted reconcile.
TARGET_SHARE = 0.05
# Templates read in turn (the same sequence for both variants).
TEMPLATES = 20


class Variant:
    """One way of reading presets, on its own connection (prepared statements are
    per connection)."""

    def __init__(self, label: str, url: str, presets: sql.SQL) -> None:
        self.label = label
        self.conn: Conn = psycopg.connect(url)
        self.presets = presets
        self.read_seconds: list[float] = []
        self.presets_seconds: list[float] = []

    def read(self, params: dict[str, Any], record: bool) -> list[tuple[Any, ...]]:
        conn = self.conn
        with conn.transaction():
            conn.execute(query("generic_plans_begin"))
            started = time.perf_counter()
            rows = conn.execute(self.presets, params, prepare=True).fetchall()
            presets_done = time.perf_counter()
            conn.execute(query("snapshot_schedules"), params, prepare=True).fetchall()
            conn.execute(query("snapshot_prebuilds"), params, prepare=True).fetchall()
            conn.execute(query("prebuilds_settings")).fetchall()
            finished = time.perf_counter()
            conn.execute(query("generic_plans_end"))
        if record:
            self.read_seconds.append(finished - started)
            self.presets_seconds.append(presets_done - started)
        return rows

    def plan_shape(self, params: dict[str, Any]) -> list[str]:
        """Node types of the plan for these parameters, top down (costs and names left out):
        the LATERAL subquery must be flattened into the same joins as before."""
        with self.conn.transaction():
            rows = self.conn.execute(sql.SQL("EXPLAIN ") + self.presets, params).fetchall()
        nodes = []
        for (line,) in rows:
            match = re.match(r"\s*(?:->\s*)?([A-Z][A-Za-z ]+?)(?: on | using |  \(|$)", line)
            if match:
                nodes.append(match.group(1).strip())
        return nodes

    def close(self) -> None:
        self.conn.close()


def _params(n: int) -> dict[str, Any]:
    return {
        "template_ids": [template_id(n)],
        "hard_limit": 3,
        "backoff_lookback": timedelta(hours=1),
    }


def measure(url: str, rounds: int, warmup: int) -> bool:
    current = Variant("current (by scope)", url, query("snapshot_presets"))
    before = Variant("before (p.last_invalidated_at)", url, bench_query("snapshot_presets_before"))
    variants = [current, before]
    mismatches = 0
    presets_read = 0
    try:
        for i in range(warmup + rounds):
            params = _params(1 + i % TEMPLATES)
            # Alternate who goes first, so neither always meets a warmer cache.
            random.shuffle(variants)
            results = [v.read(params, record=i >= warmup) for v in variants]
            mismatches += results[0] != results[1]
            presets_read += len(results[0])
        shapes = {v.label: v.plan_shape(_params(1)) for v in (current, before)}
    finally:
        for v in variants:
            v.close()

    read = {v.label: Stats.of(v.read_seconds) for v in (current, before)}
    alone = {v.label: Stats.of(v.presets_seconds) for v in (current, before)}
    print(f"\nrounds: {rounds} (+{warmup} warm-up), templates read in turn: {TEMPLATES}")
    print(
        f"preset rows read per variant: {presets_read:,}; rounds with differing rows: {mismatches}"
    )
    print("\nwhole snapshot read of one template (4 statements, generic plans):")
    for label, stats in read.items():
        print(f"  {label:32s} {stats.row()}")
    print("snapshot_presets alone:")
    for label, stats in alone.items():
        print(f"  {label:32s} {stats.row()}")
    ratio = read[current.label].median / read[before.label].median
    pairs = zip(current.presets_seconds, before.presets_seconds, strict=True)
    differences = [now - then for now, then in pairs]
    extra_ms = statistics.median(differences) * 1000
    share = extra_ms / read[before.label].median
    same_shape = shapes[current.label] == shapes[before.label]
    print(f"\nplan shapes equal: {same_shape}")
    for label, nodes in shapes.items():
        print(f"  {label:32s} {' > '.join(nodes)}")
    print(f"ratio current/before, whole read (medians): {ratio:.3f}")
    print(
        f"extra cost of the presets statement (median of paired differences): {extra_ms:+.4f} ms"
        f" = {share:+.2%} of the whole read  (target <= {TARGET_SHARE:.0%})"
    )
    ok = mismatches == 0 and presets_read > 0 and share <= TARGET_SHARE
    if presets_read == 0:
        print("no preset was read: nothing was measured")
    print(f"verdict: {verdict(ok)}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    common_args(parser)
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds")
    args = parser.parse_args()
    rounds = args.rounds or (200 if args.quick else 2000)
    scale = "scale-quick-1k" if args.quick else "spec"
    print_header("optional column read: snapshot_presets by scope vs. before")
    with bench_server() as server:
        print_server(server)
        dbname = ensure_fleet(server, scale, SCALES[scale], reuse=args.reuse)
        ok = measure(server.url(dbname), rounds, warmup=max(20, rounds // 20))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
