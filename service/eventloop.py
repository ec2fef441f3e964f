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
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")

EventLoopName = Literal["uvloop", "asyncio"]


def run(main: Coroutine[Any, Any, T], loop: EventLoopName = "uvloop") -> T:
    """Run ``main`` to completion on a new loop of the kind asked for, then close it."""
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)
