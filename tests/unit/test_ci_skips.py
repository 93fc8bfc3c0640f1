"""tests/_ci.py: under CI=true a skip fails the run, unless the test is marked allow_skip.

Each case runs a small inner pytest session (pytester) with the plugin loaded, as
tests/conftest.py loads it, and reads its outcome.
"""

from __future__ import annotations

import pytest

INNER_CONFTEST = 'pytest_plugins = ("_ci",)\n'

SKIPPING = """
import pytest

def test_skips_in_the_body():
    pytest.skip("no frobnicator here")

@pytest.fixture
def needs_tool():
    pytest.skip("tool missing")

def test_skips_in_a_fixture(needs_tool):
    pass

@pytest.mark.skipif(True, reason="by marker")
def test_skips_by_marker():
    pass

@pytest.mark.allow_skip(reason="the reason a reviewer accepted")
def test_allowed_to_skip():
    pytest.skip("allowed")

@pytest.mark.xfail(reason="known bug", strict=True)
def test_expected_failure():
    assert False

def test_passes():
    pass
"""


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_inner=SKIPPING)
    return pytester


def test_under_ci_every_unmarked_skip_fails_with_its_reason(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    result = inner.runpytest_inprocess("-rA")
    # A skip in the body fails the test; one in setup (a fixture, a skipif) is an error.
    result.assert_outcomes(passed=1, failed=1, errors=2, skipped=1, xfailed=1)
    out = result.stdout.str()
    for reason in ("no frobnicator here", "tool missing", "by marker"):
        assert f"skipped under CI=true, which must run every test: {reason}" in out
    assert "allowed" in out  # the allowed skip is still a skip, with its reason


def test_outside_ci_skips_stay_skips(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = inner.runpytest_inprocess()
    result.assert_outcomes(passed=1, skipped=4, xfailed=1)


def test_a_module_skipped_at_collection_fails_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(
        test_hidden="""
import pytest
pytest.importorskip("a_module_that_does_not_exist_anywhere")

def test_never_collected():
    pass
"""
    )
    monkeypatch.setenv("CI", "true")
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(errors=1)
    assert "skipped at collection under CI=true" in result.stdout.str()
    monkeypatch.setenv("CI", "false")
    pytester.runpytest_inprocess().assert_outcomes(skipped=1)


def test_allow_skip_without_a_reason_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(
        test_lazy="""
import pytest

@pytest.mark.allow_skip
def test_lazy():
    pytest.skip("because")
"""
    )
    monkeypatch.setenv("CI", "1")
    result = pytester.runpytest_inprocess()
    assert result.ret != 0
    assert "needs a reason" in result.stdout.str() + result.stderr.str()
