"""Shared by the queue's tests: a fake clock with a matching sleep, and small helpers.

Times are integers or halves: exact in binary floating point.
"""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel

from prebuildd.queue import QueueShutDown, Work, WorkQueue


async def all_blocked() -> None:
    """Return once every other task waits on something: anyio's own helper polls at 0.1 s.

    Asyncio-only (the backend of this module): a task is blocked when it awaits a future.
    """
    me = asyncio.current_task()
    for _ in range(10_000):
        await asyncio.sleep(0)
        running = [
            t
            for t in asyncio.all_tasks()
            if t is not me and (t._fut_waiter is None or t._fut_waiter.done())  # type: ignore[attr-defined]
        ]
        if not running:
            return
    raise AssertionError("tasks never settled")


class FakeClock:
    """A monotonic clock that only moves on `advance`, and a sleep that follows it."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, anyio.Event]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        sleeper = (self.now + seconds, anyio.Event())
        self._sleepers.append(sleeper)
        try:
            await sleeper[1].wait()
        finally:
            self._sleepers.remove(sleeper)

    async def advance(self, seconds: float) -> None:
        """Let every task block, move time, wake due sleepers, let them run until blocked.

        Time moves only while every task is blocked, as a task that has computed a timeout
        but not yet started sleeping would otherwise sleep from the new time.
        """
        await all_blocked()
        self.now += seconds
        for deadline, event in list(self._sleepers):
            if deadline <= self.now:
                event.set()
        await all_blocked()


def make_queue(
    clock: FakeClock, *, settle: float = 1.0, max_keys: int = 1000, cooldown: float = 0.0
) -> WorkQueue[str]:
    return WorkQueue(
        settle=settle, cooldown=cooldown, max_keys=max_keys, clock=clock, sleep=clock.sleep
    )


BUSY = "busy"


def busy(q: WorkQueue[str]) -> Work[str]:
    """Make `q` busy: hand out a key of its own (`BUSY`) and keep it processing.

    A busy queue's settle window is trailing (G5): events wait for its end. The caller may
    `done` the returned work; until then the queue stays busy.
    """
    q.add(BUSY, delay=0)
    work = q.get_nowait(1)
    assert work is not None and work.keys == (BUSY,), "the queue was not empty"
    return work


def take(q: WorkQueue[str], max_batch: int = 100) -> Work[str]:
    work = q.get_nowait(max_batch)
    assert work is not None, "expected ready work"
    return work


class Getter:
    """A background `get` whose result and hand-out time the test can inspect."""

    def __init__(self, q: WorkQueue[str], clock: FakeClock, max_batch: int = 100) -> None:
        self.q, self.clock, self.max_batch = q, clock, max_batch
        self.work: Work[str] | None = None
        self.at: float | None = None
        self.error: BaseException | None = None

    async def run(self) -> None:
        try:
            self.work = await self.q.get(self.max_batch)
        except QueueShutDown as exc:
            self.error = exc
        self.at = self.clock.now


def take_int(q: WorkQueue[int]) -> Work[int]:
    work = q.get_nowait(100)
    assert work is not None, "expected ready work"
    return work
