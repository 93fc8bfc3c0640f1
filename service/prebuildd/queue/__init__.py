"""The per-template work queue: the one place that decides *when* a template is reconciled.

The listener, the timers reported by plans, retries and the sweeps all feed keys (template ids
in practice, any hashable value here) into a `WorkQueue`; the dispatcher's workers take `Work`
out of it with `get()` and give it back with `done()`. The queue never looks at what a key
means.

Like client-go's workqueue, it is a small core with layers over it, each layer's guarantees
written where the layer is (and tested one by one in tests/unit/test_queue_*.py):

* core.py      `KeyQueue`: coalescing (G1), one holder per key (G2), exactly one follow-up
               (G3), ready times that only move earlier (G4), batches in ready order (G7),
               shutdown and drain (G9), the urgent band (G11);
* settle.py    `SettleWindow`: the ready time an add asks for: the settle window for events
               (G5), `now + delay` for delays (G6);
* cooldown.py  `Cooldown`: a key handed out less than `cooldown` ago waits for its end,
               unless the add is urgent (G10);
* workqueue.py `WorkQueue`: the composition the service uses, and the bound on memory with its
               full-sweep marker (G8).
"""

from prebuildd.queue.cooldown import Cooldown
from prebuildd.queue.core import KeyMeta, KeyQueue, QueueShutDown, Work
from prebuildd.queue.settle import DEFAULT_SETTLE_SECONDS, SettleWindow
from prebuildd.queue.workqueue import QueueStats, WorkQueue

__all__ = [
    "DEFAULT_SETTLE_SECONDS",
    "Cooldown",
    "KeyMeta",
    "KeyQueue",
    "QueueShutDown",
    "QueueStats",
    "SettleWindow",
    "Work",
    "WorkQueue",
]
