"""Adaptive concurrency: the AIMD limit, and LimitedPas holding calls under it."""

from __future__ import annotations

import asyncio

import pytest

from service.domain.adaptive import AdaptiveLimit
from service.domain.classification import Observation, Transport
from service.domain.ports import PasReply, PasRequest
from service.pas.limited import LimitedPas

REQUEST = PasRequest("5123456789012345000", 250, "GOODWILL", "Late delivery", "agent-1", "c-1")
APPLIED = PasReply(Observation(status=200), 0.01, points_adjusted=250)
REJECTED = PasReply(Observation(status=400), 0.01, problem="HTTP 400 INVALID_POINTS")
RATE_LIMITED = PasReply(Observation(status=429), 0.01, retry_after_s=1.0, problem="HTTP 429")
SERVER_ERROR = PasReply(Observation(status=503), 0.01, problem="HTTP 503")
READ_TIMEOUT = PasReply(Observation(transport=Transport.READ_TIMEOUT), 10.0, problem="timeout")
CIRCUIT_OPEN = PasReply(Observation(transport=Transport.CIRCUIT_OPEN), 0.0, retry_after_s=1.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def full(max_limit: int, clock: FakeClock, **kwargs: float) -> AdaptiveLimit:
    """A limit that starts at its maximum (past slow start)."""
    return AdaptiveLimit(max_limit, clock, initial_limit=max_limit, **kwargs)  # type: ignore[arg-type]


# -- the limit ---------------------------------------------------------------------------------


def test_slow_start_doubles_per_round_until_the_first_pushback() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(200, clock, initial_limit=10)
    assert limit.limit == 10
    for _ in range(10):  # one round of 10 calls
        limit.on_success()
    assert limit.limit == 20
    for _ in range(20):
        limit.on_success()
    assert limit.limit == 40
    limit.on_overload(0.05)
    assert limit.limit == 20
    for _ in range(20):  # past the threshold: + max(1/20, min_step 0.1) each
        limit.on_success()
    assert limit.limit == 22


def test_the_initial_limit_respects_the_bounds() -> None:
    assert AdaptiveLimit(4, FakeClock(), initial_limit=10).limit == 4
    assert AdaptiveLimit(40, FakeClock(), initial_limit=0, min_limit=2).limit == 2


def test_overload_halves_the_limit_at_most_once_per_round_trip() -> None:
    clock = FakeClock()
    limit = full(200, clock, min_window_s=0.05)
    for _ in range(50):  # a burst of refusals of calls sent under the old limit
        limit.on_overload(0.3)
    assert limit.limit == 100
    clock.now += 0.29
    limit.on_overload(0.3)
    assert limit.limit == 100
    clock.now += 0.01
    limit.on_overload(0.0)  # an instant refusal still waits the shortest window
    assert limit.limit == 50
    clock.now += 0.04
    limit.on_overload(0.0)
    assert limit.limit == 50
    clock.now += 0.01
    limit.on_overload(0.0)
    assert limit.limit == 25


def test_the_limit_never_leaves_its_bounds() -> None:
    clock = FakeClock()
    limit = full(8, clock, min_limit=2)
    for _ in range(20):
        clock.now += 1.0
        limit.on_overload()
    assert limit.limit == 2
    for _ in range(1000):
        limit.on_success()
    assert limit.limit == 8


def test_success_raises_slowly_when_small_and_in_steps_when_large() -> None:
    clock = FakeClock()
    small = full(200, clock, min_step=0.1)
    for _ in range(8):
        clock.now += 1.0
        small.on_overload()
    assert small.limit == 1
    small.on_success()
    assert small.limit == 2  # 1 + 1/1
    for _ in range(4):  # 2 + 1/2 + 1/2.5 + ... < 4
        small.on_success()
    assert 3 <= small.limit < 4

    large = full(200, clock, min_step=0.1)
    clock.now += 1.0
    large.on_overload()
    assert large.limit == 100
    for _ in range(1010):  # +0.1 per success: back to 200 in about 1,000 calls
        large.on_success()
    assert large.limit == 200


def test_changes_are_reported_in_whole_calls() -> None:
    clock = FakeClock()
    seen: list[int] = []
    limit = full(10, clock, on_change=seen.append)
    limit.on_overload()
    for _ in range(10):
        limit.on_success()
    assert seen == [5, 6]  # 5 + 1/5 + 1/5.2 + ... passes 6 on the sixth success
    assert limit.limit == 6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_limit": 0}, "min_limit"),
        ({"min_limit": 11}, "min_limit"),
        ({"decrease": 1.0}, "decrease"),
    ],
)
def test_nonsense_bounds_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdaptiveLimit(10, FakeClock(), **kwargs)  # type: ignore[arg-type]


# -- LimitedPas --------------------------------------------------------------------------------


class GatedPas:
    """Answers ``reply`` once the test opens the gate; records how many calls were inside."""

    def __init__(self, reply: PasReply) -> None:
        self.reply = reply
        self.gate = asyncio.Event()
        self.inside = 0
        self.most_inside = 0
        self.calls = 0

    async def adjust(self, request: PasRequest) -> PasReply:
        self.calls += 1
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            await self.gate.wait()
            await asyncio.sleep(0.001)  # an answer takes a moment: calls overlap
        finally:
            self.inside -= 1
        return self.reply


async def test_calls_beyond_the_limit_wait_for_a_slot() -> None:
    inner = GatedPas(APPLIED)
    limited = LimitedPas(inner, full(3, FakeClock()))
    calls = [asyncio.create_task(limited.adjust(REQUEST)) for _ in range(10)]
    await asyncio.sleep(0.01)
    assert inner.inside == 3
    inner.gate.set()
    replies = await asyncio.gather(*calls)
    assert replies == [APPLIED] * 10
    assert inner.most_inside == 3
    assert limited.in_flight == 0


@pytest.mark.parametrize("reply", [RATE_LIMITED, SERVER_ERROR, READ_TIMEOUT])
async def test_pushback_lowers_the_limit(reply: PasReply) -> None:
    limit = full(40, FakeClock())
    limited = LimitedPas(GatedPas(reply), limit)
    limited._inner.gate.set()  # type: ignore[attr-defined]
    assert await limited.adjust(REQUEST) is reply
    assert limit.limit == 20


@pytest.mark.parametrize("reply", [APPLIED, REJECTED])
async def test_answers_that_say_pas_keeps_up_leave_a_full_limit_alone(reply: PasReply) -> None:
    limit = full(40, FakeClock())
    inner = GatedPas(reply)
    inner.gate.set()
    assert await LimitedPas(inner, limit).adjust(REQUEST) is reply
    assert limit.limit == 40


async def test_a_circuit_open_reply_says_nothing_about_load() -> None:
    limit = full(40, FakeClock())
    inner = GatedPas(CIRCUIT_OPEN)
    inner.gate.set()
    await LimitedPas(inner, limit).adjust(REQUEST)
    assert limit.limit == 40


async def test_a_raised_limit_lets_more_waiting_calls_in() -> None:
    clock = FakeClock()
    limit = full(4, clock, min_window_s=0.0)
    limit.on_overload()
    limit.on_overload()
    assert limit.limit == 1
    inner = GatedPas(APPLIED)
    limited = LimitedPas(inner, limit)
    calls = [asyncio.create_task(limited.adjust(REQUEST)) for _ in range(6)]
    await asyncio.sleep(0.01)
    assert inner.inside == 1
    inner.gate.set()
    await asyncio.gather(*calls)
    assert inner.calls == 6
    assert inner.most_inside > 1  # the limit grew while calls waited, and let them in
    assert limit.limit == 3  # 1 -> 2 -> 2.5 -> 2.9 -> 3.2 -> 3.6 -> 3.8


async def test_a_cancelled_waiter_leaves_no_slot_taken() -> None:
    inner = GatedPas(APPLIED)
    limited = LimitedPas(inner, full(1, FakeClock()))
    first = asyncio.create_task(limited.adjust(REQUEST))
    waiter = asyncio.create_task(limited.adjust(REQUEST))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    inner.gate.set()
    assert await first is APPLIED
    assert limited.in_flight == 0
    assert await limited.adjust(REQUEST) is APPLIED
