"""Benchmarks: scripts that print figures measured side by side in one run.

Run them from the repository root as modules, e.g.
`PYTHONPATH=service python -m bench.scale --quick`. Results and commands: docs/benchmarks.md.
"""
