"""prebuildd on the schemas of older Coder releases (issue 14 item 5).

Coder's pause switch (migration 000345) first shipped in v2.25.0, so every release since is
supported. The databases here are the development subset without the columns Coder added
later (tests/integration/_coder_schemas.py; verified against each release's own dump.sql by
bench/coder_releases.py, results in docs/coder-compatibility.md):

* v2.25.0 -- the oldest: lacks every newer column, last_invalidated_at included;
* v2.28.0 -- the last without last_invalidated_at (`prebuildd invalidate` unavailable);
* v2.29.0 -- the first with it, still without v2.32's columns.

On each: `migrate` accepts the schema and installs only prebuildd's own objects, and the
operator's tools do the whole job (creates, deletes, cancels, status, events).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString
from uuid import UUID

import psycopg
import pytest
from _coder_schemas import EventInbox, absent_in, coder_like
from psycopg import sql

from factories import (
    make_org,
    make_prebuild,
    make_preset,
    make_template,
    make_version,
    promote,
)
from prebuildd.cli import EXIT_ERROR, EXIT_OK, main
from prebuildd.migrate import (
    OLDEST_CODER_RELEASE,
    SchemaMismatch,
    migrate,
    repeatable_files,
    versioned_files,
)

Conn = psycopg.Connection[Any]

RELEASES = ["v2.25.0", "v2.28.0", "v2.29.0"]
INVALIDATION = ("template_version_presets", "last_invalidated_at")


@pytest.fixture(params=RELEASES)
def release(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def release_url(empty_db_url: str, release: str) -> Iterator[str]:
    """A database shaped like Coder `release`'s, not yet migrated."""
    coder_like(empty_db_url, release)
    yield empty_db_url


def _rows(url: str, statement: LiteralString, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(statement, params or None).fetchall()


def _public_tables(url: str) -> set[str]:
    rows = _rows(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {str(name) for (name,) in rows}


_OWN_OBJECTS: LiteralString = """
SELECT 'trigger ' || tgname || ' on ' || tgrelid::regclass::text
FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE 'prebuildd\\_%'
UNION ALL
SELECT 'index ' || relname FROM pg_class WHERE relkind = 'i' AND relname LIKE 'prebuildd\\_%'
UNION ALL
SELECT 'routine ' || p.oid::regprocedure::text
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'prebuildd'
"""


def _own_objects(url: str) -> set[str]:
    return {str(row[0]) for row in _rows(url, _OWN_OBJECTS)}


def _cli(url: str, *args: str) -> int:
    return main([args[0], "--database-url", url, "--log-level", "warning", *args[1:]])


# ---------------------------------------------------------------------------------------------
# migrate
# ---------------------------------------------------------------------------------------------


def test_migrate_accepts_the_release_and_installs_only_its_own_objects(
    release_url: str, release: str, template_db_url: str
) -> None:
    tables = _public_tables(release_url)

    report = migrate(release_url)

    assert not report.installed_base_schema
    own_files = [f.path for f in versioned_files()] + [f.path for f in repeatable_files()]
    assert list(report.applied) == own_files
    assert _public_tables(release_url) == tables, "migrate created or dropped Coder tables"
    # Exactly the objects a database with the full subset gets.
    assert _own_objects(release_url) == _own_objects(template_db_url)
    lacks_invalidation = INVALIDATION in absent_in(release)
    assert report.absent_optional == (
        ("template_version_presets.last_invalidated_at",) if lacks_invalidation else ()
    )
    # Nothing of Coder's was added either.
    columns = _rows(
        release_url,
        "SELECT count(*) FROM information_schema.columns"
        " WHERE table_name = %s AND column_name = %s",
        *INVALIDATION,
    )
    assert columns == [(0 if lacks_invalidation else 1,)]
    assert migrate(release_url).applied == ()


def test_a_schema_lacking_what_the_service_needs_is_refused_with_the_complete_list(
    empty_db_url: str,
) -> None:
    coder_like(empty_db_url, OLDEST_CODER_RELEASE)
    with psycopg.connect(empty_db_url) as conn:
        conn.execute("DROP TABLE template_version_preset_prebuild_schedules")
        for table, column in [
            ("workspace_agents", "parent_id"),
            ("templates", "deprecated"),
            ("users", "is_system"),
        ]:
            conn.execute(
                sql.SQL("ALTER TABLE {} DROP COLUMN {} CASCADE").format(
                    sql.Identifier(table), sql.Identifier(column)
                )
            )
    with pytest.raises(SchemaMismatch) as caught:
        migrate(empty_db_url)
    assert set(caught.value.missing) == {
        "table template_version_preset_prebuild_schedules",
        "column templates.deprecated",
        "column users.is_system",
        "column workspace_agents.parent_id",
    }
    message = str(caught.value)
    assert OLDEST_CODER_RELEASE in message
    for item in caught.value.missing:
        assert item in message
    assert _own_objects(empty_db_url) == set()
    assert _rows(empty_db_url, "SELECT count(*) FROM pg_namespace WHERE nspname = 'prebuildd'") == [
        (0,)
    ]


# ---------------------------------------------------------------------------------------------
# The operator's tools, end to end
# ---------------------------------------------------------------------------------------------

_BUILDS: LiteralString = """
SELECT b.workspace_id, b.transition::text, j.job_status::text
FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
WHERE b.template_version_preset_id = %s AND b.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'
ORDER BY b.workspace_id, b.build_number
"""


def _builds(url: str, preset: UUID) -> list[tuple[UUID, str, str]]:
    return [(row[0], row[1], row[2]) for row in _rows(url, _BUILDS, preset)]


def test_reconcile_status_and_events_on_the_release(
    release_url: str, release: str, capsys: pytest.CaptureFixture[str]
) -> None:
    migrate(release_url)
    inbox = EventInbox(release_url)
    try:
        with psycopg.connect(release_url) as conn:
            tpl = make_template(conn, make_org(conn), name="release-tpl")
            p1 = make_preset(conn, tpl.version_id, desired=2)
            running = make_prebuild(conn, p1, created_at=datetime.now(UTC) - timedelta(hours=1))
            conn.commit()

        # One running, two wanted: one create.
        assert _cli(release_url, "reconcile", "--once") == EXIT_OK
        builds = sorted((t, s) for _, t, s in _builds(release_url, p1))
        assert builds == [("start", "pending"), ("start", "succeeded")]
        capsys.readouterr()
        assert _cli(release_url, "status") == EXIT_OK
        lines = capsys.readouterr().out.splitlines()
        row = dict(zip(lines[0].split(), lines[1].split(), strict=False))
        assert row["TEMPLATE"] == "release-tpl"
        assert (row["DESIRED"], row["RUNNING"], row["STARTING"]) == ("2", "1", "1")

        # Promotion: the old version's running prebuild is deleted, its queued create
        # canceled, and the new version's preset filled.
        with psycopg.connect(release_url) as conn:
            v2 = make_version(conn, tpl, active=False)
            p2 = make_preset(conn, v2, desired=1)
            promote(conn, tpl.id, v2)
            conn.commit()
        assert _cli(release_url, "reconcile", "--once") == EXIT_OK
        old = _builds(release_url, p1)
        assert (running.workspace_id, "delete", "pending") in old
        assert sorted(s for _, t, s in old if t == "start") == ["canceled", "succeeded"]
        assert [(t, s) for _, t, s in _builds(release_url, p2)] == [("start", "pending")]
        # A provisioner failing the new create's job after yet another promotion (the
        # reconcile's own writes are not echoed back as events: prebuildd.execute_actions).
        # Announced as a failure; a success is not (sql/functions/notify_event.sql).
        with psycopg.connect(release_url) as conn:
            promote(conn, tpl.id, make_version(conn, tpl, active=False))
            conn.commit()
            conn.execute(
                "UPDATE provisioner_jobs SET started_at = now(), completed_at = now(),"
                " updated_at = now(), error = 'boom' WHERE id IN (SELECT job_id FROM"
                " workspace_builds WHERE template_version_preset_id = %s)",
                (p2,),
            )
            conn.commit()

        assert inbox.kinds() >= {"build_inserted", "job_status", "version_promoted"}
        # Coder's own update of a preset still works on this schema and is announced.
        with psycopg.connect(release_url) as conn:
            conn.execute(
                "UPDATE template_version_presets SET desired_instances = 3 WHERE id = %s", (p2,)
            )
            conn.commit()
        assert inbox.kinds() == {"preset_changed"}
    finally:
        inbox.close()


def test_invalidate_works_where_the_release_has_it_and_fails_cleanly_where_not(
    release_url: str, release: str
) -> None:
    migrate(release_url)
    with psycopg.connect(release_url) as conn:
        tpl = make_template(conn, make_org(conn))
        preset = make_preset(conn, tpl.version_id, desired=1)
        old = make_prebuild(conn, preset, created_at=datetime.now(UTC) - timedelta(hours=1))
        conn.commit()
    assert _cli(release_url, "reconcile", "--once") == EXIT_OK
    before = _builds(release_url, preset)
    assert before == [(old.workspace_id, "start", "succeeded")], "nothing to do yet"

    code = _cli(release_url, "invalidate", "--preset", str(preset))
    assert _cli(release_url, "reconcile", "--once") == EXIT_OK
    after = _builds(release_url, preset)
    if INVALIDATION in absent_in(release):
        assert code == EXIT_ERROR
        assert after == before
    else:
        assert code == EXIT_OK
        # The invalidated prebuild is replaced: deleted, and a new one created.
        assert (old.workspace_id, "delete", "pending") in after
        assert [s for w, t, s in after if w != old.workspace_id and t == "start"] == ["pending"]
