"""The command-line contract other tools rely on: output, exit codes, clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from factories import make_org, make_prebuild, make_preset, make_template, make_user
from prebuildd.cli import EXIT_ERROR, EXIT_NONE_AVAILABLE, EXIT_OK, EXIT_USAGE, main


def _count_builds(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM workspace_builds").fetchone()
    assert row is not None
    return int(row[0])


def _seed(url: str, desired: int = 2) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        tpl = make_template(conn, make_org(conn), name="python")
        preset = make_preset(conn, tpl.version_id, name="small", desired=desired)
        user = make_user(conn)
        conn.commit()
    return {"template": tpl, "preset": preset, "user": user}


def run(url: str, *args: str) -> int:
    return main([args[0], "--database-url", url, "--log-level", "warning", *args[1:]])


def test_dry_run_explains_and_writes_nothing(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed(db_url)
    assert run(db_url, "reconcile", "--once", "--dry-run") == EXIT_OK
    out = capsys.readouterr().out
    assert "python" in out and "small" in out
    assert "would: create 2 prebuild(s)" in out
    assert "why:" in out
    assert _count_builds(db_url) == 0


def test_reconcile_once_converges_and_status_shows_it(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed(db_url)
    assert run(db_url, "reconcile", "--once") == EXIT_OK
    assert "created 2, deleted 0, canceled 0" in capsys.readouterr().out
    assert _count_builds(db_url) == 2
    assert run(db_url, "status") == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[:4] == ["TEMPLATE", "VERSION", "ACTIVE", "PRESET"]
    row = dict(zip(header, lines[1].split(), strict=False))
    assert row["TEMPLATE"] == "python" and row["ACTIVE"] == "yes"
    assert (row["DESIRED"], row["RUNNING"], row["STARTING"]) == ("2", "0", "2")


def test_claim_prints_the_workspace_or_exits_3(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    world = _seed(db_url, desired=1)
    preset, user = str(world["preset"]), str(world["user"])
    assert run(db_url, "claim", "--preset", preset, "--user", user, "--name", "a") == (
        EXIT_NONE_AVAILABLE
    )
    assert "no eligible prebuild" in capsys.readouterr().err
    with psycopg.connect(db_url) as conn:
        built = make_prebuild(conn, world["preset"])
        conn.commit()
    assert run(db_url, "claim", "--preset", preset, "--user", user, "--name", "mine") == EXIT_OK
    assert capsys.readouterr().out.strip() == str(built.workspace_id)
    # A refused claim (the name is taken now) is a clear error, not a traceback.
    with psycopg.connect(db_url) as conn:
        make_prebuild(conn, world["preset"])
        conn.commit()
    assert run(db_url, "claim", "--preset", preset, "--user", user, "--name", "mine") == (
        EXIT_ERROR
    )
    assert "claim refused" in capsys.readouterr().err


def test_pause_and_resume_use_coders_switch(db_url: str) -> None:
    def setting() -> Any:
        with psycopg.connect(db_url) as conn:
            row = conn.execute(
                "SELECT value FROM site_configs WHERE key = 'prebuilds_settings'"
            ).fetchone()
        return None if row is None else json.loads(row[0])

    assert run(db_url, "pause") == EXIT_OK
    assert setting() == {"reconciliation_paused": True}
    assert run(db_url, "resume") == EXIT_OK
    assert setting() == {"reconciliation_paused": False}


def test_invalidate_sets_the_preset_timestamp_and_rejects_unknown_presets(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    world = _seed(db_url)
    assert run(db_url, "invalidate", "--preset", str(world["preset"])) == EXIT_OK
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT last_invalidated_at IS NOT NULL FROM template_version_presets WHERE id = %s",
            (world["preset"],),
        ).fetchone()
    assert row == (True,)
    unknown = "00000000-0000-0000-0000-000000000001"
    assert run(db_url, "invalidate", "--preset", unknown) == EXIT_ERROR
    assert f"no preset {unknown}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--sweep-interval", "soon"], "invalid duration 'soon'"),
        (["claim", "--preset", "x", "--user", "y", "--name", "z"], "is not a UUID"),
        (["reconcile", "--failure-hard-limit", "-1"], "--failure-hard-limit must be >= 0"),
        (["status", "--log-level", "loud"], "unknown log level 'loud'"),
    ],
)
def test_bad_input_is_a_usage_error_with_a_clear_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], db_url: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        code = main([*args, "--database-url", db_url])
        raise SystemExit(code)
    assert exited.value.code == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_demo_refuses_a_bad_metrics_address_before_touching_the_server(
    pg_admin_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def demo_database() -> object:
        # The demo recreates its database on every run: a new oid means it was touched.
        with psycopg.connect(pg_admin_url) as conn:
            row = conn.execute("SELECT oid FROM pg_database WHERE datname = 'prebuildd_demo'")
            return row.fetchone()

    before = demo_database()
    code = main(["demo", "--no-live", "--metrics-addr", "nowhere", "--database-url", pg_admin_url])
    assert code == EXIT_USAGE
    assert "--metrics-addr: invalid listen address 'nowhere'" in capsys.readouterr().err
    assert demo_database() == before


def test_a_bad_environment_value_is_reported_like_a_bad_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PREBUILDD_SWEEP_INTERVAL", "bogus")
    with pytest.raises(SystemExit) as exited:
        main(["run", "--database-url", "postgresql://nowhere/x"])
    assert exited.value.code == EXIT_USAGE
    assert "--sweep-interval: invalid duration 'bogus'" in capsys.readouterr().err


def test_without_a_database_the_message_says_what_to_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--data-dir", str(tmp_path)]) == EXIT_USAGE
    assert "PREBUILDD_DATABASE_URL" in capsys.readouterr().err


def test_a_dead_database_is_an_error_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = "postgresql://someone:hunter2@127.0.0.1:1/nowhere?connect_timeout=2"
    assert main(["status", "--database-url", url]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("prebuildd: ")
    assert "hunter2" not in err


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--lock-timeout", "0"], {}, "the lock timeout must be positive"),
        (["--lock-timeout", "soon"], {}, "invalid duration 'soon'"),
        ([], {"PREBUILDD_LOCK_RETRY_FOR": "bogus"}, "--lock-retry-for: invalid duration"),
    ],
)
def test_migrate_lock_flags_reject_bad_values_and_write_nothing(
    args: list[str],
    env: dict[str, str],
    message: str,
    empty_db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(main(["migrate", "--database-url", empty_db_url, *args]))
    assert exited.value.code == EXIT_USAGE
    assert message in capsys.readouterr().err
    with psycopg.connect(empty_db_url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'prebuildd'")
        assert row.fetchone() == (0,)


def test_migrate_gives_up_on_a_held_lock_with_a_clear_message_then_succeeds(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE prebuildd.schema_migrations SET checksum = 'stale'"
            " WHERE path LIKE 'triggers/%'"
        )
    # Coder's transaction, open with a write on templates: our trigger DDL cannot get its lock.
    blocker = psycopg.connect(db_url)
    try:
        blocker.execute("UPDATE templates SET updated_at = updated_at WHERE false")
        flags = ["--lock-timeout", "50ms", "--lock-retry-for", "300ms"]
        assert run(db_url, "migrate", *flags) == EXIT_ERROR
        err = capsys.readouterr().err
        assert err.startswith("prebuildd: migrate: triggers/")
        assert "run the same command again" in err
        assert f"pid {blocker.info.backend_pid} " in err
    finally:
        blocker.rollback()
        blocker.close()
    assert run(db_url, "migrate", "--lock-timeout", "50ms") == EXIT_OK
    assert "triggers/" in capsys.readouterr().out
