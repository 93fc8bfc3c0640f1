"""`run_keeping`: the CLI runs its coroutines through it, handing the result over outside the
event loop (a coroutine returning a big sweep's outcomes costs asyncio time at exit)."""

from __future__ import annotations

import pytest

from prebuildd.cli_commands import run_keeping


def test_run_keeping_returns_the_coroutines_result() -> None:
    outcomes = [object() for _ in range(3)]

    async def sweep() -> list[object]:
        return outcomes

    assert run_keeping(sweep) is outcomes


def test_run_keeping_returns_none_and_tuples_as_they_are() -> None:
    async def nothing() -> None:
        return None

    async def pair() -> tuple[int, str]:
        return 1, "x"

    assert run_keeping(nothing) is None
    assert run_keeping(pair) == (1, "x")


def test_run_keeping_raises_what_the_coroutine_raises() -> None:
    async def broken() -> int:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_keeping(broken)
