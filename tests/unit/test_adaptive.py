"""Adaptive concurrency: the AIMD limit, and LimitedPas holding calls under it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.domain.adaptive import AdaptiveLimit, RatePacer
from service.domain.classification import Observation, Transport
from service.domain.ports import PasReply, PasRequest
from service.pas.limited import LimitedPas
from tests.fakes import FakeClock

FAR = 1e12  # a deadline far beyond any test (a time.monotonic() instant)
REQUEST = PasRequest("5123456789012345000", 250, "GOODWILL", "Late delivery", "agent-1", "c-1")
APPLIED = PasReply(Observation(status=200), 0.01, points_adjusted=250)
REJECTED = PasReply(Observation(status=400), 0.01, problem="HTTP 400 INVALID_POINTS")
RATE_LIMITED = PasReply(Observation(status=429), 0.01, retry_after_s=1.0, problem="HTTP 429")
SERVER_ERROR = PasReply(Observation(status=503), 0.01, problem="HTTP 503")
READ_TIMEOUT = PasReply(Observation(transport=Transport.READ_TIMEOUT), 10.0, problem="timeout")
CIRCUIT_OPEN = PasReply(Observation(transport=Transport.CIRCUIT_OPEN), 0.0, retry_after_s=1.0)


def full(max_limit: int, clock: FakeClock, **kwargs: Any) -> AdaptiveLimit:
    """A limit that starts at its maximum (past slow start)."""
    return AdaptiveLimit(max_limit, clock, initial_limit=max_limit, **kwargs)


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

    async def adjust(self, request: PasRequest, *, deadline: float) -> PasReply:
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
    calls = [asyncio.create_task(limited.adjust(REQUEST, deadline=FAR)) for _ in range(10)]
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
    assert await limited.adjust(REQUEST, deadline=FAR) is reply
    assert limit.limit == 20


@pytest.mark.parametrize("reply", [APPLIED, REJECTED])
async def test_answers_that_say_pas_keeps_up_leave_a_full_limit_alone(reply: PasReply) -> None:
    limit = full(40, FakeClock())
    inner = GatedPas(reply)
    inner.gate.set()
    assert await LimitedPas(inner, limit).adjust(REQUEST, deadline=FAR) is reply
    assert limit.limit == 40


async def test_a_circuit_open_reply_says_nothing_about_load() -> None:
    limit = full(40, FakeClock())
    inner = GatedPas(CIRCUIT_OPEN)
    inner.gate.set()
    await LimitedPas(inner, limit).adjust(REQUEST, deadline=FAR)
    assert limit.limit == 40


async def test_a_raised_limit_lets_more_waiting_calls_in() -> None:
    clock = FakeClock()
    limit = full(4, clock, min_window_s=0.0)
    limit.on_overload()
    limit.on_overload()
    assert limit.limit == 1
    inner = GatedPas(APPLIED)
    limited = LimitedPas(inner, limit)
    calls = [asyncio.create_task(limited.adjust(REQUEST, deadline=FAR)) for _ in range(6)]
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
    first = asyncio.create_task(limited.adjust(REQUEST, deadline=FAR))
    waiter = asyncio.create_task(limited.adjust(REQUEST, deadline=FAR))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    inner.gate.set()
    assert await first is APPLIED
    assert limited.in_flight == 0
    assert await limited.adjust(REQUEST, deadline=FAR) is APPLIED


# -- the rate pacer ----------------------------------------------------------------------------


def accept(pacer: RatePacer, clock: FakeClock, count: int, over_s: float) -> None:
    for _ in range(count):
        clock.now += over_s / count
        pacer.on_accepted()


def test_no_pacing_until_a_429() -> None:
    clock = FakeClock()
    pacer = RatePacer(clock)
    accept(pacer, clock, 500, 1.0)
    assert pacer.rate is None
    assert pacer.delay() == 0.0


def test_a_429_paces_below_the_rate_pas_accepted() -> None:
    clock = FakeClock()
    pacer = RatePacer(clock, decrease=0.7)
    accept(pacer, clock, 80, 1.0)  # 80 accepted in the last second
    pacer.on_throttled()
    assert pacer.rate == pytest.approx(56.0)
    delays = [pacer.delay() for _ in range(5)]  # calls asked for at the same instant
    assert delays == pytest.approx([1 / 56 * n for n in range(1, 6)])


def test_more_429s_cut_at_most_once_per_window_and_never_below_the_floor() -> None:
    clock = FakeClock()
    pacer = RatePacer(clock, decrease=0.5, min_rate=2.0, window_s=1.0)
    accept(pacer, clock, 40, 1.0)
    pacer.on_throttled()
    assert pacer.rate == pytest.approx(20.0)
    pacer.on_throttled()
    assert pacer.rate == pytest.approx(20.0)
    for _ in range(10):
        clock.now += 1.0
        pacer.on_throttled()
    assert pacer.rate == pytest.approx(2.0)


def test_accepted_calls_raise_the_rate_and_quiet_ends_pacing() -> None:
    clock = FakeClock()
    pacer = RatePacer(clock, growth=0.2, release_s=60.0)
    accept(pacer, clock, 50, 1.0)
    pacer.on_throttled()
    start = pacer.rate
    assert start is not None
    accept(pacer, clock, 35, 1.0)  # a second at the paced rate: + 20 % of it
    assert pacer.rate == pytest.approx(start + 35 * 0.2)
    clock.now += 60.0
    assert pacer.delay() == 0.0
    assert pacer.rate is None


async def test_limited_pas_paces_after_a_429_and_not_before() -> None:
    class Answers:
        def __init__(self) -> None:
            self.replies = [APPLIED] * 20 + [RATE_LIMITED] + [APPLIED] * 5

        async def adjust(self, request: PasRequest, *, deadline: float) -> PasReply:
            return self.replies.pop(0)

    clock = FakeClock()
    pacer = RatePacer(clock)
    limited = LimitedPas(Answers(), full(10, clock), pacer)
    for _ in range(20):
        await limited.adjust(REQUEST, deadline=FAR)
    assert pacer.rate is None
    await limited.adjust(REQUEST, deadline=FAR)
    assert pacer.rate is not None
    assert pacer.delay() > 0.0


async def test_a_paced_turn_past_the_deadline_is_deferred_and_books_nothing() -> None:
    """After a 429 at 1 call/s, a call whose deadline comes before its turn is held back
    (DEFERRED, Retry-After the turn's distance), PAS is not called, and no turn is booked:
    three such calls in a row leave the next turn where it was."""
    import time

    class Never:
        async def adjust(self, request: PasRequest, *, deadline: float) -> PasReply:
            raise AssertionError("PAS must not be called")

    clock = FakeClock()
    pacer = RatePacer(clock, decrease=0.5, min_rate=1.0)
    accept(pacer, clock, 2, 1.0)
    pacer.on_throttled()
    assert pacer.wait_s() == pytest.approx(1.0)
    limited = LimitedPas(Never(), full(10, clock), pacer)
    replies = [await limited.adjust(REQUEST, deadline=time.monotonic() + 0.2) for _ in range(3)]
    assert {reply.observation.transport for reply in replies} == {Transport.DEFERRED}
    assert [reply.retry_after_s for reply in replies] == pytest.approx([1.0, 1.0, 1.0])
    assert pacer.wait_s() == pytest.approx(1.0)
    assert limited.in_flight == 0
