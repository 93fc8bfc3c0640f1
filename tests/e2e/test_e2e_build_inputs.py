"""Issue 10 items 2 and 3 as an operator sees them, on a real `prebuildd run`: a preset whose
parameters are invalid and one whose workspace tag prebuildd cannot evaluate get no
workspace; each reason is logged, counted in /metrics and shown by `prebuildd status`; the
valid preset of the same template is built with its evaluated workspace tags."""

from __future__ import annotations

import subprocess
import sys
from uuid import UUID

import psycopg
import pytest
from _db import scalar
from _procs import Processes, child_env, eventually, scrape

from factories import add_parameter, add_workspace_tags, make_org, make_preset, make_template

pytestmark = pytest.mark.slow

JOB_TAGS = """
SELECT j.tags FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
WHERE b.template_version_preset_id = %(p)s
"""


def _seed(url: str) -> dict[str, UUID]:
    with psycopg.connect(url) as conn:
        org = make_org(conn, name="acme")
        routed = make_template(conn, org, name="routed").version_id
        add_parameter(conn, routed, "region", options=("eu", "us"), default_value="us")
        add_parameter(conn, routed, "disk", type="number", validation_min=10, default_value="20")
        add_workspace_tags(conn, routed, {"region": "data.coder_parameter.region.value"})
        held = make_template(conn, org, name="held").version_id
        add_workspace_tags(conn, held, {"zone": "var.zone"})
        ids = {
            "valid": make_preset(conn, routed, name="valid", desired=2,
                                 parameters={"region": "eu"}),
            "bad-param": make_preset(conn, routed, name="bad-param", desired=1,
                                     parameters={"disk": "5"}),
            "bad-tag": make_preset(conn, held, name="bad-tag", desired=1),
        }
        conn.commit()
    return ids


def test_invalid_and_held_presets_are_explained(db_url: str) -> None:
    ids = _seed(db_url)
    status_of = "SELECT prebuild_status::text FROM template_version_presets WHERE id = %(p)s"
    created = "SELECT count(*) FROM workspace_builds WHERE template_version_preset_id = %(p)s"
    with Processes(db_url) as procs:
        service = procs.service(sweep="2s")
        port = service.metrics_port()
        eventually(
            lambda: scalar(db_url, status_of, {"p": ids["bad-param"]}) == "validation_failed",
            timeout=20, what="the invalid preset stored validation_failed",
            on_timeout=service.tail,
        )
        eventually(
            lambda: scalar(db_url, created, {"p": ids["valid"]}) == 2,
            timeout=20, what="the valid preset created", on_timeout=service.tail,
        )

        def explained() -> bool:
            kinds = {
                (r.get("preset_id"), r.get("kind"))
                for r in service.records("invalid preset settings")
            }
            return {
                (str(ids["bad-param"]), "invalid_parameter"),
                (str(ids["bad-tag"]), "unevaluated_workspace_tag"),
            } <= kinds

        eventually(explained, timeout=20, what="both reasons logged", on_timeout=service.tail)
        logged = next(
            r for r in service.records("invalid preset settings")
            if r.get("kind") == "invalid_parameter"
        )
        assert "'disk'" in logged["error"] and "below the minimum 10" in logged["error"]

        labels = {"template_name": "routed", "preset_name": "bad-param",
                  "organization_name": "acme"}

        def counted() -> list[str]:
            m = scrape(port)
            missing = [
                kind for kind in ("invalid_parameter", "unevaluated_workspace_tag")
                if not m.value("prebuildd_input_errors_total", kind=kind)
            ]
            if m.value("prebuildd_prebuilt_workspaces_preset_validation_failed", **labels) != 1:
                missing.append("preset_validation_failed{bad-param}")
            return missing

        eventually(lambda: not counted(), timeout=20, what="both reasons counted",
                   interval=0.5, on_timeout=lambda: f"missing: {counted()}")

    assert scalar(db_url, created, {"p": ids["bad-param"]}) == 0
    assert scalar(db_url, created, {"p": ids["bad-tag"]}) == 0
    assert scalar(db_url, status_of, {"p": ids["bad-tag"]}) == "healthy"
    with psycopg.connect(db_url) as conn:
        tags = [row[0] for row in conn.execute(JOB_TAGS, {"p": ids["valid"]})]
    assert tags == [{"scope": "organization", "owner": "", "region": "eu"}] * 2

    status = subprocess.run(
        [sys.executable, "-m", "prebuildd.cli", "status", "--database-url", db_url,
         "--log-level", "warning"],
        capture_output=True, text=True, env=child_env(), timeout=60, check=True,
    ).stdout
    assert "why no prebuilds are created:" in status
    assert "routed / " in status and "bad-param: parameter 'disk'" in status
    assert "bad-tag: workspace tag 'zone' = 'var.zone'" in status
    assert "healthy (creates held)" in status
