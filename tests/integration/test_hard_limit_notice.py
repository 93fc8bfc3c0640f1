"""Who hears that a preset hit the failure hard limit, and how (issue 10 item 11).

Recipients and methods are chosen the way Coder's own notifications choose them: site-level
owners and template admins plus the admins and template admins of the template's organization;
the notification template's own method, else the deployment's default method (mirrored by
`--notifications-method`), plus Coder Inbox when it is on (`--notifications-inbox-enabled`);
nobody who turned the notification off; one message per user, method and day.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
import pytest

from factories import ago, make_org, make_prebuild, make_preset, make_template, make_user
from prebuildd import store
from prebuildd.cli import EXIT_OK, EXIT_USAGE, main
from prebuildd.config import NotificationDelivery
from prebuildd.model import Plan, PrebuildStatus, Preset, PresetState, SetStatus
from prebuildd.queries import query

pytestmark = pytest.mark.anyio

Conn = psycopg.Connection[Any]
NOTICE = UUID("414d9331-c1fc-4761-b40c-d1f4702279eb")
CODER_DEFAULTS = NotificationDelivery()


@pytest.fixture
def conn(db_url: str) -> Iterator[Conn]:
    with psycopg.connect(db_url) as connection:
        yield connection


def _user(conn: Conn, username: str, *, roles: str = "{}", **columns: object) -> UUID:
    user = make_user(conn, username=username)
    conn.execute("UPDATE users SET rbac_roles = %s WHERE id = %s", (roles, user))
    for column, value in columns.items():
        assert column in {"status", "deleted", "is_system", "name"}
        conn.execute(f"UPDATE users SET {column} = %s WHERE id = %s", (value, user))  # noqa: S608
    return user


def _member(conn: Conn, user: UUID, org: UUID, *roles: str) -> None:
    conn.execute(
        "INSERT INTO organization_members (user_id, organization_id, created_at, updated_at,"
        " roles) VALUES (%s, %s, now(), now(), %s)",
        (user, org, list(roles)),
    )


def _preset(conn: Conn, org: UUID) -> UUID:
    tpl = make_template(conn, org, name="gpu")
    return make_preset(conn, tpl.version_id, name="a100", desired=1)


def _plan_shell(preset_id: UUID) -> Plan:
    """A plan shell: `execute` only needs the preset's id from it."""
    preset = Preset(
        id=preset_id, name="p", template_id=UUID(int=0), template_name="t",
        organization_id=UUID(int=0), organization_name="o", template_version_id=UUID(int=0),
        template_version_name="v", using_active_version=True, template_deleted=False,
        template_deprecated=False, desired_instances=0,
    )  # fmt: skip
    return Plan(preset, PresetState(0, 0, 0, 0, 0, 0, 0, 0, 0, None, False), (), None)


async def _hard_limit(url: str, preset: UUID, delivery: NotificationDelivery) -> None:
    """What a reconcile does when the preset reaches the limit: store the status, notify."""
    async with await psycopg.AsyncConnection.connect(url) as aconn, aconn.transaction():
        action = SetStatus(preset, PrebuildStatus.HARD_LIMITED)
        # SetStatus records no instant: `now` is not sent anywhere.
        result = await store.execute(
            aconn, _plan_shell(preset), action, now=datetime.now(UTC), notifications=delivery
        )
    assert result.status is PrebuildStatus.HARD_LIMITED


def _messages(conn: Conn) -> dict[UUID, set[str]]:
    rows = conn.execute("SELECT user_id, method::text FROM notification_messages").fetchall()
    conn.commit()
    found: dict[UUID, set[str]] = {}
    for user, method in rows:
        found.setdefault(user, set()).add(method)
    return found


async def test_site_and_organization_admins_of_the_template_are_notified(
    conn: Conn, db_url: str
) -> None:
    org, other_org = make_org(conn, name="acme"), make_org(conn, name="globex")
    owner = _user(conn, "owner", roles="{owner}")
    site_template_admin = _user(conn, "site-ta", roles="{template-admin}")
    org_admin = _user(conn, "org-admin")
    _member(conn, org_admin, org, "organization-admin")
    org_template_admin = _user(conn, "org-ta", name="")
    _member(conn, org_template_admin, org, "organization-template-admin")
    # Not recipients: an admin of another organization, a plain member, an auditor.
    elsewhere = _user(conn, "globex-admin")
    _member(conn, elsewhere, other_org, "organization-admin")
    _member(conn, elsewhere, org)
    auditor = _user(conn, "auditor", roles="{auditor}")
    _member(conn, auditor, org, "organization-auditor")
    preset = _preset(conn, org)
    conn.commit()

    await _hard_limit(db_url, preset, CODER_DEFAULTS)

    messages = _messages(conn)
    assert set(messages) == {owner, site_template_admin, org_admin, org_template_admin}
    assert all(methods == {"smtp", "inbox"} for methods in messages.values())
    payload = conn.execute(
        "SELECT payload FROM notification_messages WHERE user_id = %s LIMIT 1",
        (org_template_admin,),
    ).fetchone()
    assert payload is not None
    body = payload[0] if isinstance(payload[0], dict) else json.loads(payload[0])
    # Coder's payload: the template's name, a display name that falls back to the username,
    # the labels, and the targets.
    assert body["notification_name"] == "Prebuild Failure Limit Reached"
    assert body["user_name"] == body["user_username"] == "org-ta"
    assert body["labels"]["org"] == "acme" and body["labels"]["preset"] == "a100"
    assert len(body["targets"]) == 4 and str(preset) in body["targets"]


async def test_deleted_and_system_users_are_not_notified_dormant_and_suspended_ones_are(
    conn: Conn, db_url: str
) -> None:
    """Coder's template-admin notices go to every non-deleted, non-system admin, whatever
    their status (GetUsers without a status filter)."""
    org = make_org(conn)
    dormant = _user(conn, "dormant", roles="{template-admin}", status="dormant")
    suspended = _user(conn, "suspended", roles="{owner}", status="suspended")
    _user(conn, "gone", roles="{owner}", deleted=True)
    _user(conn, "robot", roles="{owner}", is_system=True)
    preset = _preset(conn, org)
    conn.commit()

    await _hard_limit(db_url, preset, CODER_DEFAULTS)

    assert set(_messages(conn)) == {dormant, suspended}


@pytest.mark.parametrize(
    ("delivery", "own_method", "expected"),
    [
        pytest.param(CODER_DEFAULTS, None, {"smtp", "inbox"}, id="coder-defaults"),
        pytest.param(NotificationDelivery("webhook"), None, {"webhook", "inbox"}, id="webhook"),
        pytest.param(NotificationDelivery(None), None, {"inbox"}, id="no-delivery-configured"),
        pytest.param(NotificationDelivery("smtp", inbox=False), None, {"smtp"}, id="no-inbox"),
        pytest.param(NotificationDelivery(None, inbox=False), None, set(), id="nothing-at-all"),
        # The template's own method wins over the deployment's default.
        pytest.param(CODER_DEFAULTS, "webhook", {"webhook", "inbox"}, id="template-method"),
        pytest.param(CODER_DEFAULTS, "inbox", {"inbox"}, id="template-method-inbox"),
    ],
)
async def test_methods_are_chosen_as_coders_enqueuer_does(
    conn: Conn,
    db_url: str,
    delivery: NotificationDelivery,
    own_method: str | None,
    expected: set[str],
) -> None:
    org = make_org(conn)
    admin = _user(conn, "admin", roles="{template-admin}")
    conn.execute(
        "UPDATE notification_templates SET method = %s WHERE id = %s", (own_method, NOTICE)
    )
    preset = _preset(conn, org)
    conn.commit()

    await _hard_limit(db_url, preset, delivery)

    assert _messages(conn).get(admin, set()) == expected


async def test_one_admins_preference_silences_only_that_admin(conn: Conn, db_url: str) -> None:
    """Coder's enqueue trigger refuses a message its user turned off; prebuildd leaves that
    user out instead of letting the refusal fail everyone's messages."""
    org = make_org(conn)
    quiet = _user(conn, "quiet", roles="{template-admin}")
    loud = _user(conn, "loud", roles="{template-admin}")
    conn.execute(
        "INSERT INTO notification_preferences (user_id, notification_template_id, disabled)"
        " VALUES (%s, %s, true)",
        (quiet, NOTICE),
    )
    preset = _preset(conn, org)
    conn.commit()

    await _hard_limit(db_url, preset, CODER_DEFAULTS)

    assert _messages(conn) == {loud: {"smtp", "inbox"}}


async def test_a_notice_off_by_default_reaches_only_who_turned_it_on(
    conn: Conn, db_url: str
) -> None:
    org = make_org(conn)
    opted_in = _user(conn, "opted-in", roles="{owner}")
    _user(conn, "default", roles="{owner}")
    conn.execute(
        "UPDATE notification_templates SET enabled_by_default = false WHERE id = %s", (NOTICE,)
    )
    conn.execute(
        "INSERT INTO notification_preferences (user_id, notification_template_id, disabled)"
        " VALUES (%s, %s, false)",
        (opted_in, NOTICE),
    )
    preset = _preset(conn, org)
    conn.commit()

    await _hard_limit(db_url, preset, CODER_DEFAULTS)

    assert set(_messages(conn)) == {opted_in}


def test_inbox_is_not_a_default_method(conn: Conn) -> None:
    """Coder refuses inbox as its default method; so does the function, whoever calls it."""
    org = make_org(conn)
    preset = _preset(conn, org)
    conn.execute(
        "UPDATE template_version_presets SET prebuild_status = 'hard_limited' WHERE id = %s",
        (preset,),
    )
    conn.commit()
    params = {"preset_id": preset, "default_method": "inbox", "inbox": True}
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute(query("notify_hard_limited"), params)
    conn.rollback()


# ---- the settings, end to end -----------------------------------------------------------------


def test_reconcile_notifies_with_the_methods_its_flags_and_environment_mirror(
    conn: Conn, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    org = make_org(conn)
    admin = _user(conn, "admin", roles="{template-admin}")
    preset = _preset(conn, org)
    now = datetime.now(UTC)
    for minutes in (90, 80, 70):  # three failures in a row, outside the backoff lookback
        make_prebuild(conn, preset, job_status="failed", created_at=ago(now, minutes=minutes))
    conn.commit()
    monkeypatch.setenv("PREBUILDD_NOTIFICATIONS_METHOD", "webhook")
    args = ["reconcile", "--once", "--database-url", db_url, "--log-level", "warning"]
    assert main([*args, "--backoff-lookback", "30m", "--notifications-inbox-enabled", "false"]) == (
        EXIT_OK
    )
    status = conn.execute(
        "SELECT prebuild_status::text FROM template_version_presets WHERE id = %s", (preset,)
    ).fetchone()
    assert status == ("hard_limited",)
    assert _messages(conn) == {admin: {"webhook"}}


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        pytest.param(["--notifications-method", "pigeon"], {}, id="flag-method"),
        pytest.param([], {"PREBUILDD_NOTIFICATIONS_METHOD": "pigeon"}, id="env-method"),
        pytest.param(["--notifications-inbox-enabled", "maybe"], {}, id="flag-inbox"),
        pytest.param([], {"PREBUILDD_NOTIFICATIONS_INBOX_ENABLED": "maybe"}, id="env-inbox"),
    ],
)
def test_bad_notification_settings_are_usage_errors(
    db_url: str, argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for command in (["reconcile", "--once"], ["run", "--no-migrate"]):
        assert _exit_code([*command, "--database-url", db_url, *argv]) == EXIT_USAGE
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM workspace_builds").fetchone() == (0,)


def _exit_code(argv: list[str]) -> object:
    """main()'s exit status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_the_defaults_are_coders() -> None:
    """CODER_NOTIFICATIONS_METHOD defaults to smtp, CODER_NOTIFICATIONS_INBOX_ENABLED to true."""
    assert NotificationDelivery() == NotificationDelivery(default_method="smtp", inbox=True)
