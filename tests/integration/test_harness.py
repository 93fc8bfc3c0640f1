"""The harness itself: a real server, isolated databases, the embedded package's lifecycle."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import psycopg

from prebuildd.embedded import EmbeddedPostgres, _postmaster_alive
from prebuildd.queries import query


def test_each_test_gets_its_own_database(empty_db_url: str, pg_admin_url: str) -> None:
    with psycopg.connect(empty_db_url) as a, psycopg.connect(pg_admin_url) as b:
        name_a = a.info.dbname
        name_b = b.info.dbname
    assert name_a != name_b
    assert name_a.startswith("t_")


def test_embedded_server_starts_is_reused_and_stops() -> None:
    root = Path(tempfile.mkdtemp(prefix="pbd-e-", dir="/tmp"))
    try:
        first = EmbeddedPostgres(root / "pg")
        url = first.start()
        assert first.started_here
        with psycopg.connect(url) as conn:
            assert conn.execute(query("ping")).fetchone() == (1,)

        # A second start on the same directory reuses the running server and does not own it.
        second = EmbeddedPostgres(root / "pg")
        assert second.start() == url
        assert not second.started_here
        second.stop()
        assert _postmaster_alive(root / "pg")

        first.stop()
        assert not _postmaster_alive(root / "pg")
    finally:
        shutil.rmtree(root, ignore_errors=True)
