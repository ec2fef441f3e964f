"""Periodic probes of what the service depends on, reported to ``Health``.

The command loop notices a fault when a record meets it; a watchdog notices it while the
service is idle too: the broker gone, a topic deleted, the idempotency store's file removed.
Each probe is a coroutine that returns when all is well and raises (any exception) with the
problem; its text goes to ``/readyz`` under the probe's name.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from service.health import Health

log = structlog.get_logger("service.watchdog")

Probe = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Check:
    """One named probe, with the longest it may take."""

    name: str
    probe: Probe
    timeout_s: float = 5.0


async def run_check(check: Check, health: Health) -> bool:
    """Run one probe; report or clear its problem; True when it passed."""
    try:
        await asyncio.wait_for(check.probe(), check.timeout_s)
    except TimeoutError:
        health.report(check.name, f"no answer in {check.timeout_s:g} s")
        return False
    except Exception as exc:  # a probe's failure, whatever its type, is a problem to show
        text = str(exc) or type(exc).__name__
        health.report(check.name, text[:300])
        return False
    health.clear(check.name)
    return True


async def watch(
    checks: Sequence[Check], health: Health, stop: asyncio.Event, interval_s: float = 5.0
) -> None:
    """Run every check each ``interval_s`` until ``stop`` is set."""
    while not stop.is_set():
        for check in checks:
            await run_check(check, health)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


def kafka_check(
    fetch_topics: Callable[[], Awaitable[set[str]]], topics: Sequence[str], timeout_s: float
) -> Check:
    """The broker answers and every topic the service uses exists."""

    async def probe() -> None:
        present = await fetch_topics()
        missing = [name for name in topics if name not in present]
        if missing:
            raise LookupError(
                "topics missing: " + ", ".join(missing) + " (create them: points-adjuster topics)"
            )

    return Check("kafka", probe, timeout_s)
