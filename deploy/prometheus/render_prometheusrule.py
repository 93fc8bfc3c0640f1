"""Writes deploy/kubernetes/monitoring/prometheusrule.yaml from prebuildd-rules.yaml.

    python deploy/prometheus/render_prometheusrule.py          # rewrite the manifest
    python deploy/prometheus/render_prometheusrule.py --check  # exit 1 when it is out of date

The rules file is the one source: the PrometheusRule (Prometheus Operator) carries the same
`groups`, copied as text so the expressions keep their layout and comments.
tests/integration/test_operator_kit.py fails when the committed manifest differs from what
this script writes, and when the two parse to different groups.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
RULES = HERE / "prebuildd-rules.yaml"
OUTPUT = HERE.parent / "kubernetes" / "monitoring" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/prebuildd-rules.yaml by
# deploy/prometheus/render_prometheusrule.py: edit the rules file, then run the script.
#
# prebuildd's alert rules for the Prometheus Operator. Your Prometheus selects PrometheusRules
# by label (kube-prometheus-stack: `release: <name>`): add that label if it does not select
# all of them. Runbooks: docs/operations.md.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: prebuildd
  labels:
    app.kubernetes.io/name: prebuildd
    app.kubernetes.io/component: reconciler
spec:
"""


def render(rules_text: str | None = None) -> str:
    """The manifest: the header, then the rules file from `groups:` on, under `spec:`."""
    text = RULES.read_text(encoding="utf-8") if rules_text is None else rules_text
    lines = text.splitlines()
    start = next((n for n, line in enumerate(lines) if line.startswith("groups:")), None)
    if start is None:
        raise ValueError(f"{RULES}: no top-level `groups:`")
    body = [("  " + line).rstrip() for line in lines[start:]]
    return HEADER + "\n".join(body) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
