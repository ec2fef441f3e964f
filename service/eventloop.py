"""Which asyncio event loop runs the service: uvloop by default, the standard one on request.

uvloop implements the loop, its transports and its thread-safe wake-ups in C (on libuv). The
service spends most of its time in those (a socket read and write per PAS call, a producer
and a consumer connection, a hop to the idempotency thread per batch), and the end-to-end
benchmark measured about 5 % less CPU per adjustment with it (docs/benchmarks.md). The
standard loop remains one setting away (``PA_EVENT_LOOP=asyncio``), e.g. to rule uvloop out
when chasing a bug.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")

EventLoopName = Literal["uvloop", "asyncio"]

GC_THRESHOLDS = (10_000, 50, 50)
"""The cyclic garbage collector's thresholds while the service runs (CPython's default:
700, 10, 10). Nearly everything a command allocates is freed by reference counting the
moment it is dropped; the collector only finds cycles, and with the defaults it ran a young
collection every 700 container allocations (a few per command) and a full one, which walks
every object of the process, every few hundred commands. 8-10 % of the service's CPU per
adjustment in the end-to-end benchmark (docs/benchmarks.md, issue 16)."""


def collect_less() -> None:
    """Freeze what start-up made (the modules, the settings: never garbage) out of the
    collector's reach, and collect less often (``GC_THRESHOLDS``)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run(main: Coroutine[Any, Any, T], loop: EventLoopName = "uvloop") -> T:
    """Run ``main`` to completion on a new loop of the kind asked for, then close it."""
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)
