"""User-visible paths through real `prebuildd run` processes, each driven by the trigger
alone (the periodic sweep is an hour away in every test here):

* traces: a reconcile's root span, with its attributes and children, arrives at a real
  OTLP/HTTP receiver, configured by nothing but the OTEL_* variables;
* pause and resume: `prebuildd pause` stops the writes of the running service (an event it
  receives while paused is planned, not acted on), `prebuildd resume` lets them happen;
* the hard failure limit: after three failed builds (simulated provisioner, failure rate 1)
  the running service stores `hard_limited`, stops creating and queues Coder's notification
  for the template admins (rows in notification_messages);
* two replicas, one deficit of N: exactly N creates, with the overlap made certain: one
  replica is held in the middle of its writes while the other receives the same event and
  finds the template locked.

Waits are generous (a loaded 2-core machine); what is asserted is order and outcome.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg
import pytest
from _db import assert_integrity, holding_version, pools, scalar
from _procs import (
    Proc,
    Processes,
    error_records,
    eventually,
    reconciled,
    run_cli,
    scrape,
)

from _otlp import ReceivedSpan, otlp_receiver
from factories import make_org, make_preset, make_template, make_user, make_version, promote

pytestmark = pytest.mark.slow

WAIT = 60.0  # seconds; only ever reached when something is wrong


def _set_desired(url: str, preset: UUID, desired: int) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE template_version_presets SET desired_instances = %s WHERE id = %s",
            (desired, preset),
        )


def _first_builds(url: str, preset: UUID) -> int:
    """Creates ever made for the preset (first `start` builds by the prebuilds user)."""
    return int(
        scalar(
            url,
            "SELECT count(*) FROM workspace_builds WHERE template_version_preset_id = %(p)s"
            " AND build_number = 1 AND transition = 'start'",
            {"p": preset},
        )
    )


def _no_errors(*procs: Proc) -> None:
    for proc in procs:
        assert not error_records(proc), proc.tail(40)


# ---- 1. traces over OTLP/HTTP -----------------------------------------------------------------


def test_a_reconcile_span_tree_reaches_a_real_otlp_receiver(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        old = make_preset(conn, tpl.version_id, name="dev", desired=1)
        v2 = make_version(conn, tpl.id, active=False)
        make_preset(conn, v2, name="dev", desired=1)
        conn.commit()

    with otlp_receiver() as receiver, Processes(db_url) as procs:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_SERVICE_NAME": "prebuildd-e2e",
            # The batch processor's default is to export every 5 s; the test need not wait.
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }
        service = procs.service(env=env)
        service.wait_listening()
        eventually(lambda: pools(db_url)[old].live == 1, timeout=WAIT, what="v1 pool filled")
        with psycopg.connect(db_url) as conn:
            promote(conn, tpl.id, v2)

        def event_root() -> ReceivedSpan | None:
            return next(
                (
                    s
                    for s in receiver.spans()
                    if s.name == "prebuildd.reconcile"
                    and s.attributes.get("prebuildd.trigger") == "event"
                    and s.attributes.get("prebuildd.actions.create")
                ),
                None,
            )

        root = eventually(
            event_root, timeout=WAIT, what="the promotion's reconcile span received",
            on_timeout=service.tail,
        )
        spans = receiver.spans()
        _no_errors(service)

    assert set(receiver.paths) == {"/v1/traces"}
    assert set(receiver.content_types) == {"application/x-protobuf"}
    assert root.parent_span_id == "", "the reconcile is the root of its trace"
    assert root.resource["service.name"] == "prebuildd-e2e"
    assert root.resource["service.version"]
    attrs = root.attributes
    assert attrs["prebuildd.template_id"] == str(tpl.id)
    assert attrs["prebuildd.templates_locked"] == 1
    assert attrs["prebuildd.events_coalesced"] >= 1
    assert attrs["prebuildd.lag_ms"] >= 0
    assert attrs["prebuildd.actions.create"] == 1
    assert attrs["prebuildd.actions.cancel_pending"] == 1
    children = {s.name for s in spans if s.parent_span_id == root.span_id}
    assert {
        "prebuildd.lock_templates",
        "prebuildd.read_snapshot",
        "prebuildd.plan",
        "prebuildd.action.create",
        "prebuildd.action.cancel_pending",
    } <= children
    in_trace = [s for s in spans if s.trace_id == root.trace_id]
    db = [s for s in in_trace if s.attributes.get("db.system.name") == "postgresql"]
    assert db, "the reconcile's statements are spans of its trace"
    assert all(not key.startswith("db.query.parameter") for s in db for key in s.attributes)


# ---- 2. pause and resume ----------------------------------------------------------------------


def test_pause_and_resume_reach_the_running_service_through_the_trigger(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        preset = make_preset(conn, tpl.version_id, desired=1)
        conn.commit()

    with Processes(db_url) as procs:
        # Debug: the paused reconciles of a sweep are quiet, and quiet sweeps log at debug.
        service = procs.service("--log-level", "debug")
        port = service.metrics_port()
        service.wait_listening()
        eventually(lambda: pools(db_url)[preset].live == 1, timeout=WAIT, what="pool filled")

        paused = run_cli("pause", "--database-url", db_url)
        assert paused.returncode == 0, paused.stderr
        # The settings change is a global event: the service sweeps, and sees the switch.
        service.wait_for(
            lambda r: r.get("msg") == "reconciled" and r.get("paused") is True,
            timeout=WAIT, what="a reconcile that saw the pause",
        )
        eventually(
            lambda: scrape(port).value("prebuildd_prebuilt_workspaces_reconciliation_paused")
            == 1,
            timeout=WAIT, what="the paused gauge at 1",
        )

        # An event while paused: planned (two creates), not done.
        _set_desired(db_url, preset, 3)
        record = service.wait_for(
            lambda r: r.get("msg") == "reconciled"
            and r.get("trigger") == "event"
            and r.get("template_id") == str(tpl.id)
            and r.get("paused") is True,
            timeout=WAIT, what="the desired change reconciled while paused",
        )
        assert record["actions"] == {}, record
        assert pools(db_url)[preset].live == 1, "a paused service wrote"
        assert _first_builds(db_url, preset) == 1

        resumed = run_cli("resume", "--database-url", db_url)
        assert resumed.returncode == 0, resumed.stderr
        eventually(
            lambda: pools(db_url)[preset].live == 3, timeout=WAIT,
            what="the two creates after the resume", on_timeout=service.tail,
        )
        def creating() -> list[dict[str, Any]] | None:
            found = [r for r in service.records("reconciled") if r.get("actions", {}).get("create")]
            return found if len(found) >= 2 else None

        # (A log line is read a moment after the commit it reports: wait for both.)
        acted = eventually(
            creating, timeout=WAIT, what="both creating reconciles logged",
            on_timeout=service.tail,
        )
        # The startup sweep filled the pool; the resume's sweep (the only other sweep: the
        # periodic one is an hour away) made the two that were held back.
        assert [(r["trigger"], r["paused"]) for r in acted] == [
            ("startup", False),
            ("sweep", False),
        ], acted
        metrics = scrape(port)
        assert metrics.value("prebuildd_events_received_total", kind="settings_changed") == 2
        assert metrics.value("prebuildd_prebuilt_workspaces_reconciliation_paused") == 0
        _no_errors(service)
    assert _first_builds(db_url, preset) == 3
    assert_integrity(db_url)


# ---- 3. the hard failure limit -----------------------------------------------------------------


def test_three_failed_builds_hard_limit_the_preset_and_notify_its_admins(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        preset = make_preset(conn, tpl.version_id, name="gpu", desired=1)
        admin = make_user(conn)
        conn.execute("UPDATE users SET rbac_roles = '{template-admin}' WHERE id = %s", (admin,))
        bystander = make_user(conn)
        conn.commit()

    with Processes(db_url) as procs:
        # No backoff between attempts (Coder's is a minute): the three failures come in a few
        # seconds, each reported to the service by its job's status change.
        service = procs.service("--failure-hard-limit", "3", "--backoff-interval", "0s")
        provisioner = procs.provisioner("--failure-rate", "1")
        service.wait_listening()

        def status() -> str:
            return str(
                scalar(
                    db_url,
                    "SELECT prebuild_status::text FROM template_version_presets WHERE id = %(p)s",
                    {"p": preset},
                )
            )

        eventually(
            lambda: status() == "hard_limited", timeout=WAIT, what="the preset hard-limited",
            on_timeout=procs.dump,
        )
        messages = eventually(
            lambda: _notifications(db_url), timeout=WAIT, what="the notification queued"
        )
        created = _first_builds(db_url, preset)
        failed = int(
            scalar(
                db_url,
                "SELECT count(*) FROM workspace_builds b JOIN provisioner_jobs j"
                " ON j.id = b.job_id WHERE b.template_version_preset_id = %(p)s"
                " AND j.job_status = 'failed'",
                {"p": preset},
            )
        )
        limited = eventually(
            lambda: [
                r
                for r in service.records("preset actions")
                if r.get("preset_id") == str(preset) and "set_status" in r.get("actions", [])
            ],
            timeout=WAIT, what="the status change logged", on_timeout=service.tail,
        )
        _no_errors(service)
        assert provisioner.alive, provisioner.tail()

    assert (created, failed) == (3, 3), "a create after the third failure, or too few"
    assert limited, "the status was stored by the running service"
    assert {m[0] for m in messages} == {admin}, "only the template admin is notified"
    assert bystander not in {m[0] for m in messages}
    assert sorted(m[1] for m in messages) == ["inbox", "smtp"]
    assert {m[2] for m in messages} == {"gpu"}


def _notifications(url: str) -> list[Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT user_id, method::text, payload->'labels'->>'preset'"
            " FROM notification_messages"
        ).fetchall()


# ---- 5. two replicas, one deficit --------------------------------------------------------------

DEFICIT = 5


def test_two_replicas_fill_one_deficit_exactly_once(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        preset = make_preset(conn, tpl.version_id, desired=0)
        conn.commit()

    with Processes(db_url) as procs:
        replicas = [procs.service(name=f"replica-{n}") for n in range(2)]
        for replica in replicas:
            replica.wait_listening()
        with holding_version(db_url, tpl.version_id) as holder:
            _set_desired(db_url, preset, DEFICIT)  # one event, heard by both replicas
            # One replica takes the template's lock and stops in the middle of its creates;
            # the other, woken by the same event, must find the template locked.
            eventually(
                holder.blocked_writers, timeout=WAIT, what="a replica stopped mid-write",
                on_timeout=procs.dump,
            )
            busy = eventually(
                lambda: [r for r in replicas if reconciled(r, trigger="event", busy=1)],
                timeout=WAIT, what="the other replica finding the template busy",
                on_timeout=procs.dump,
            )
        assert len(busy) == 1, procs.dump()
        [waiter] = busy
        [writer] = [r for r in replicas if r is not waiter]
        # The writer commits once the lock is gone; the waiter looks again (its busy retry,
        # or the writer's own build notifications, whichever comes first) and finds nothing
        # left to do.
        eventually(
            lambda: pools(db_url)[preset].live == DEFICIT, timeout=WAIT, what="the deficit filled"
        )
        again = eventually(
            lambda: reconciled(waiter, template_id=str(tpl.id)),
            timeout=WAIT, what="the waiter reconciling the template", on_timeout=procs.dump,
        )
        assert again[0]["actions"] == {}, again
        # `actions` counts actions (one create of N workspaces is one): the writer created
        # in exactly one reconcile, the waiter in none. (A log line is read a moment after
        # the commit it reports: wait for it.)
        creating = eventually(
            lambda: [r for r in writer.records("reconciled") if r.get("actions", {}).get("create")],
            timeout=WAIT, what="the writer's reconcile logged", on_timeout=writer.tail,
        )
        assert [r["actions"]["create"] for r in creating] == [1], writer.tail()
        assert not any(r.get("actions") for r in waiter.records("reconciled")), waiter.tail()
        _no_errors(*replicas)
    assert _first_builds(db_url, preset) == DEFICIT
    assert_integrity(db_url)
