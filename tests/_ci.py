"""Under CI a skip is a failure: a green CI run must have run every test.

Loaded by tests/conftest.py as a plugin (`pytest_plugins`). With `CI=true` (or 1, yes) in the
environment, every skipped test -- and every module skipped at collection -- is reported as
failed, with the skip's own reason, however the skip came about (a `pytest.skip` deep in a
fixture, a `skipif` marker, an `importorskip`). A skip helper that already fails under CI
(tests/_prometheus.py, test_least_privilege.py) keeps its own message; this catches the ones
that forget to.

The one way out is a marker on the test, with a reason someone has to defend in review:

    @pytest.mark.allow_skip(reason="...why a CI run may legitimately not run this...")

Outside CI skips stay skips; the tests that may skip there name, in their reason, the
variable that opts out explicitly (PREBUILDD_TEST_SKIP_*).
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

MARKER = "allow_skip"


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(reason): this test may skip under CI=true (the reason is required)",
    )


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _allowed(item: pytest.Item) -> bool:
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        return False
    reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
    if not str(reason).strip():
        raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.{MARKER} needs a reason")
    return True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    # An expected failure is reported as skipped too; it is not a skip.
    if not report.skipped or hasattr(report, "wasxfail") or not under_ci():
        return
    if _allowed(item):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI=true, which must run every test: {_skip_reason(report)}\n"
        f"(make the test's condition hold in CI, or mark it "
        f"@pytest.mark.{MARKER}(reason=...) with a reason you can defend)"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.CollectReport = outcome.get_result()
    if report.skipped and under_ci():
        report.outcome = "failed"
        report.longrepr = (
            f"{collector.nodeid} skipped at collection under CI=true, which must run every "
            f"test: {_skip_reason(report)}"
        )
