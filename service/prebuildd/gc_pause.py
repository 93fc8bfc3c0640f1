"""Hold Python's cyclic garbage collector off while a batch is turned into plans.

Reading a 200-template batch (some 50,000 rows: tuples and UUIDs, all tracked by the
collector) and turning it into snapshots and plans allocates a few hundred thousand objects,
almost none of them part of a reference cycle: reference counting frees them. Left on, the
collector runs hundreds of times per sweep, and its full collections walk every live object;
measured on the SPEC fleet that was about a quarter of a sweep's client CPU. Deferred, it
runs once afterwards over what survived.

Only for synchronous stretches (no waiting on I/O in between), so that other tasks never run
with the collector held off for long. Uses are counted: nested or overlapping uses resume the
collector when the last one ends, and a collector the application switched off stays off.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["deferred_collection"]


class _State:
    holders = 0
    # Whether the first holder found the collector on (and so the last must switch it back).
    resume = False


@contextlib.contextmanager
def deferred_collection() -> Iterator[None]:
    if _State.holders == 0:
        _State.resume = gc.isenabled()
        gc.disable()
    _State.holders += 1
    try:
        yield
    finally:
        _State.holders -= 1
        if _State.holders == 0 and _State.resume:
            gc.enable()
