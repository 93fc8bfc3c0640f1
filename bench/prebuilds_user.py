"""Why the snapshot reads spell the prebuilds user as a literal: what a parameter would cost.

sql/queries/snapshot.sql keeps Coder's prebuilds user as the literal uuid instead of taking it
as a bound parameter (model.PREBUILDS_USER_ID). The reads run under generic plans
(`generic_plans_begin`), and a generic plan cannot see how common that owner is. This bench
runs, side by side in one run and interleaved round by round, `snapshot_prebuilds` as shipped
and the same statement with the literal replaced by a parameter (derived from the shipped
text, so the two differ in exactly that), each on its own connection with the generic plans
and prepared statements prebuildd.store uses, for the same templates of a fleet.

Verdict: both variants return identical rows (else MISSED: nothing comparable was measured),
and the parameter costs at least `TARGET_RATIO` times the literal (median of the per-round
ratios, paired so that the machine's load cancels out). MISSED means the literal no longer
buys anything, and the comment in snapshot.sql should be revisited. Also printed: which index
of `workspaces` each variant's plan reads.

    PYTHONPATH=service python -m bench.prebuilds_user [--quick] [--reuse] [--rounds N]
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
from prebuildd.model import PREBUILDS_USER_ID
from prebuildd.queries import query

Conn = psycopg.Connection[Any]

LITERAL = f"'{PREBUILDS_USER_ID}'::uuid"
PARAMETER = "%(prebuilds_user_id)s::uuid"
# The parameter must cost at least this much more than the literal for the literal to be worth
# its comment.
TARGET_RATIO = 1.2
TEMPLATES = 20


class Variant:
    def __init__(self, label: str, url: str, statement: sql.SQL) -> None:
        self.label = label
        self.conn: Conn = psycopg.connect(url)
        self.statement = statement
        self.seconds: list[float] = []

    def read(self, params: dict[str, Any], record: bool) -> list[tuple[Any, ...]]:
        with self.conn.transaction():
            self.conn.execute(query("generic_plans_begin"))
            started = time.perf_counter()
            rows = self.conn.execute(self.statement, params, prepare=True).fetchall()
            finished = time.perf_counter()
            self.conn.execute(query("generic_plans_end"))
        if record:
            self.seconds.append(finished - started)
        return sorted(rows, key=repr)

    def workspaces_index(self, params: dict[str, Any]) -> str:
        """The indexes of `workspaces` the plan reads (the choice the literal is about)."""
        with self.conn.transaction():
            self.conn.execute(query("generic_plans_begin"))
            plan = "\n".join(
                str(line)
                for (line,) in self.conn.execute(sql.SQL("EXPLAIN ") + self.statement, params)
            )
            own = {str(name) for (name,) in self.conn.execute(bench_query("workspaces_indexes"))}
        used = set(re.findall(r"(?:using|Bitmap Index Scan on) (\w+)", plan))
        return ", ".join(sorted(used & own)) or "none"

    def close(self) -> None:
        self.conn.close()


def _params(n: int) -> dict[str, Any]:
    return {
        "template_ids": [template_id(n)],
        "hard_limit": 3,
        "backoff_lookback": timedelta(hours=1),
        "prebuilds_user_id": PREBUILDS_USER_ID,
    }


def _with_parameter() -> sql.SQL:
    shipped = str(query("snapshot_prebuilds").as_string(None))
    if LITERAL not in shipped:
        raise SystemExit(f"snapshot_prebuilds no longer spells {LITERAL}: nothing to compare")
    # The shipped text with one literal replaced: a file of this repository, never input.
    return sql.SQL(shipped.replace(LITERAL, PARAMETER))


def measure(url: str, rounds: int, warmup: int) -> bool:
    literal = Variant("literal (as shipped)", url, query("snapshot_prebuilds"))
    parameter = Variant("bound parameter", url, _with_parameter())
    variants = [literal, parameter]
    mismatches = rows_read = 0
    try:
        for i in range(warmup + rounds):
            params = _params(1 + i % TEMPLATES)
            random.shuffle(variants)  # neither always meets the warmer cache
            results = [v.read(params, record=i >= warmup) for v in variants]
            mismatches += results[0] != results[1]
            rows_read += len(results[0])
        indexes = {v.label: v.workspaces_index(_params(1)) for v in (literal, parameter)}
    finally:
        for v in variants:
            v.close()

    print(f"\nrounds: {rounds} (+{warmup} warm-up), templates read in turn: {TEMPLATES}")
    print(f"rows read per variant: {rows_read:,}; rounds with differing rows: {mismatches}")
    print("\nsnapshot_prebuilds for one template (generic plan, prepared):")
    for v in (literal, parameter):
        print(f"  {v.label:22s} {Stats.of(v.seconds).row()}  workspaces via {indexes[v.label]}")
    pairs = zip(parameter.seconds, literal.seconds, strict=True)
    ratio = statistics.median(p / lit for p, lit in pairs)
    print(f"\nparameter / literal (median of paired ratios): {ratio:.2f}", end="")
    print(f"  (target >= {TARGET_RATIO})")
    ok = mismatches == 0 and rows_read > 0 and ratio >= TARGET_RATIO
    if rows_read == 0:
        print("no row was read: nothing was measured")
    print(f"verdict: {verdict(ok)}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    common_args(parser)
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds")
    args = parser.parse_args()
    rounds = args.rounds or (100 if args.quick else 1000)
    scale = "quick" if args.quick else "reaction"
    print_header("the prebuilds user in snapshot_prebuilds: literal vs. bound parameter")
    with bench_server() as server:
        print_server(server)
        dbname = ensure_fleet(server, scale, SCALES[scale], reuse=args.reuse)
        ok = measure(server.url(dbname), rounds, warmup=max(10, rounds // 20))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
