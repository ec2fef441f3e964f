"""Per-command costs of issue 16's small cuts, each alone: the earlier form against the
current one, µs per adjustment (best of 5, a hot loop: a lower bound of the service's cost,
whose caches are cold between commands).

* the labelled children of the per-command metrics: ``labels()`` on every call against the
  cache ``Metrics.*_for`` (7 lookups per adjustment: a record consumed, an outcome, a PAS
  call counted and timed, three store calls timed);
* a record's log context: ``bound_contextvars`` (bind, then reset) against binding it for
  the record's own task (``CommandRunner._run_one``);
* the store's timing of three calls: a generator context manager against try/finally
  (``MeteredStore._call``);
* the acknowledgement of an outcome: a task per record (``sizing._acknowledged``, kept)
  against chained done-callbacks (tried and dropped: slower).

Usage: ``.venv/bin/python benchmarks/bench_overhead_micro.py``
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
import timeit
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import structlog
import uvloop

from service.kafka.sizing import TOO_LARGE
from service.metrics import Metrics

N = 100_000
METRICS = Metrics()
OPERATIONS = ("claim", "finish", "mark_published")
LOG_CONTEXT = {
    "topic": "bench-commands",
    "partition": 3,
    "offset": 12_345,
    "trace_id": "0" * 32,
    "idempotency_key": "k" * 36,
    "correlation_id": "c" * 36,
}


def best_us(fn: Callable[[], object], number: int = N) -> float:
    fn()
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def labels_each_call() -> None:
    m = METRICS
    m.records_consumed.labels("t").inc()
    m.outcomes.labels("completed", "").inc()
    m.pas_requests.labels("applied", "200").inc()
    m.pas_latency.labels("applied").observe(0.05)
    for operation in OPERATIONS:
        m.store_latency.labels(operation).observe(0.001)


def labels_cached() -> None:
    m = METRICS
    m.records_consumed_for("t").inc()
    m.outcomes_for("completed", "").inc()
    m.pas_requests_for("applied", "200").inc()
    m.pas_latency_for("applied").observe(0.05)
    for operation in OPERATIONS:
        m.store_latency_for(operation).observe(0.001)


def context_bound_and_reset() -> None:
    with structlog.contextvars.bound_contextvars(**LOG_CONTEXT):
        pass


def context_bound_for_the_task() -> None:
    structlog.contextvars.bind_contextvars(**LOG_CONTEXT)


async def answered() -> int:
    return 1


@contextlib.contextmanager
def measured(operation: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        METRICS.store_latency.labels(operation).observe(time.perf_counter() - started)


async def timed_by_context_manager(operation: str, call: Coroutine[Any, Any, int]) -> int:
    with measured(operation):
        return await call


async def timed_by_try_finally(operation: str, call: Coroutine[Any, Any, int]) -> int:
    started = time.perf_counter()
    try:
        return await call
    finally:
        METRICS.store_latency_for(operation).observe(time.perf_counter() - started)


async def acknowledged_by_task(delivery: asyncio.Future[int]) -> int:
    return await delivery


def acknowledged_by_callbacks(delivery: asyncio.Future[int]) -> asyncio.Future[int]:
    """The version tried (its resend path left out): a done-callback per delivery."""
    outcome: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def copy(done: asyncio.Future[int]) -> None:
        if outcome.done():
            return
        if done.cancelled():
            outcome.cancel()
        elif (error := done.exception()) is not None:
            outcome.set_exception(error)
        else:
            outcome.set_result(done.result())

    def acknowledged(done: asyncio.Future[int]) -> None:
        error = None if done.cancelled() else done.exception()
        if isinstance(error, TOO_LARGE) and not outcome.done():
            raise NotImplementedError("the resend of the tried version: never taken here")
        copy(done)

    delivery.add_done_callback(acknowledged)
    return outcome


async def on_the_loop() -> list[tuple[str, float, float]]:
    loop = asyncio.get_running_loop()
    rows = []
    timings = []
    for timed in (timed_by_context_manager, timed_by_try_finally):
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(N):
                for operation in OPERATIONS:
                    await timed(operation, answered())
            best = min(best, time.perf_counter() - started)
        timings.append(best / N * 1e6)
    rows.append(("store timing, 3 calls", timings[0], timings[1]))
    timings = []
    rounds = N // 5
    for by_task in (True, False):
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(rounds):
                delivery: asyncio.Future[int] = loop.create_future()
                outer = (
                    asyncio.ensure_future(acknowledged_by_task(delivery))
                    if by_task
                    else acknowledged_by_callbacks(delivery)
                )
                delivery.set_result(1)
                await outer
            best = min(best, time.perf_counter() - started)
        timings.append(best / rounds * 1e6)
    rows.append(("outcome acknowledged (task vs callbacks)", timings[0], timings[1]))
    return rows


def main() -> None:
    rows = [
        ("metric children, 7 lookups", best_us(labels_each_call), best_us(labels_cached)),
        (
            "log context of a record",
            best_us(lambda: contextvars.copy_context().run(context_bound_and_reset)),
            best_us(lambda: contextvars.copy_context().run(context_bound_for_the_task)),
        ),
    ]
    rows += uvloop.run(on_the_loop())
    print(f"{'per adjustment':<44}{'before µs':>10}{'after µs':>10}{'saved':>8}")
    for name, before, after in rows:
        print(f"{name:<44}{before:>10.2f}{after:>10.2f}{before - after:>8.2f}")


if __name__ == "__main__":
    main()
