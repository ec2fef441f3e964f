"""GuardedPas: a real CircuitBreaker in front of a scripted PasPort, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from service.domain.circuit import CircuitBreaker, CircuitState
from service.domain.classification import Action, Observation, Transport, classify
from service.domain.outcome import Reason
from service.domain.ports import PasReply, PasRequest
from service.pas.guarded import GuardedPas
from tests.fakes import FakeClock, ScriptedPas

THRESHOLD = 3
OPEN_S = 5.0
FAR = 1e12  # a deadline far beyond any test (a time.monotonic() instant)
REQUEST = PasRequest("5123456789012345000", 250, "GOODWILL", "Late delivery", "agent-1", "c-1")

APPLIED = PasReply(Observation(status=200), 0.01, points_adjusted=250)
CONNECT = PasReply(Observation(transport=Transport.CONNECT), 0.01, problem="ConnectError")
READ_TIMEOUT = PasReply(Observation(transport=Transport.READ_TIMEOUT), 10.0, problem="ReadTimeout")
RATE_LIMITED = PasReply(Observation(status=429), 0.01, retry_after_s=1.0, problem="HTTP 429")
SERVER_ERROR = PasReply(Observation(status=500), 0.01, problem="HTTP 500")
REJECTED = PasReply(Observation(status=400), 0.01, problem="HTTP 400 INVALID_POINTS")
NOT_FOUND = PasReply(Observation(status=404), 0.01, problem="HTTP 404 ACCOUNT_NOT_FOUND")
UNAUTHORIZED = PasReply(Observation(status=401), 0.01, problem="HTTP 401 DECLINED")


class Rig:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.breaker = CircuitBreaker(THRESHOLD, OPEN_S, self.clock)
        self.inner = ScriptedPas(repeat_last=True)  # the last answer repeats
        self.pas = GuardedPas(self.inner, self.breaker)

    def script(self, *replies: PasReply) -> None:
        self.inner.script = list(replies)

    async def calls(self, times: int) -> list[PasReply]:
        return [await self.pas.adjust(REQUEST, deadline=FAR) for _ in range(times)]


@pytest.fixture
def rig() -> Rig:
    return Rig()


async def open_it(rig: Rig) -> None:
    rig.script(CONNECT)
    await rig.calls(THRESHOLD)
    assert rig.breaker.state is CircuitState.OPEN


def is_circuit_open(reply: PasReply) -> bool:
    return reply.observation == Observation(transport=Transport.CIRCUIT_OPEN)


# -- closed: calls go through ----------------------------------------------------------------


async def test_a_closed_circuit_passes_the_request_and_returns_the_reply_unchanged(
    rig: Rig,
) -> None:
    """While closed, the inner port gets the very request and its reply is returned as is."""
    rig.script(APPLIED)
    reply = await rig.pas.adjust(REQUEST, deadline=FAR)
    assert reply is APPLIED
    assert rig.inner.requests == [REQUEST]
    assert rig.breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize(
    "failure",
    [CONNECT, READ_TIMEOUT, RATE_LIMITED, SERVER_ERROR],
    ids=["connect", "read-timeout", "429", "500"],
)
async def test_retry_and_unknown_endings_open_the_circuit(rig: Rig, failure: PasReply) -> None:
    """THRESHOLD consecutive RETRY or UNKNOWN endings open the circuit; one fewer does not."""
    assert classify(failure.observation).action in (Action.RETRY, Action.UNKNOWN)
    rig.script(failure)
    replies = await rig.calls(THRESHOLD - 1)
    assert rig.breaker.state is CircuitState.CLOSED
    assert all(reply is failure for reply in replies)
    assert await rig.pas.adjust(REQUEST, deadline=FAR) is failure
    # mypy still holds the state narrowed by the assert above; the call changed it
    assert rig.breaker.state is CircuitState.OPEN  # type: ignore[comparison-overlap]
    assert len(rig.inner.requests) == THRESHOLD


@pytest.mark.parametrize(
    "answer",
    [APPLIED, REJECTED, NOT_FOUND, UNAUTHORIZED],
    ids=["applied", "400", "404", "401"],
)
async def test_answers_that_show_pas_is_up_count_as_success(rig: Rig, answer: PasReply) -> None:
    """APPLIED, PERMANENT and DEAD_LETTER endings reset the failure count: it stays closed."""
    rig.script(CONNECT, CONNECT, answer, CONNECT, CONNECT)
    await rig.calls(THRESHOLD - 1)
    assert rig.breaker.consecutive_failures == THRESHOLD - 1
    await rig.pas.adjust(REQUEST, deadline=FAR)
    assert rig.breaker.consecutive_failures == 0
    await rig.calls(THRESHOLD - 1)
    assert rig.breaker.state is CircuitState.CLOSED
    assert len(rig.inner.requests) == 2 * (THRESHOLD - 1) + 1


# -- open: nothing is sent -------------------------------------------------------------------


async def test_an_open_circuit_answers_circuit_open_without_calling_pas(rig: Rig) -> None:
    """While open, adjust returns CIRCUIT_OPEN (a RETRY) and the inner port is not called."""
    await open_it(rig)
    sent = len(rig.inner.requests)
    replies = await rig.calls(5)
    assert len(rig.inner.requests) == sent
    for reply in replies:
        assert is_circuit_open(reply)
        assert reply.duration_s == 0.0
        assert reply.points_adjusted is None
        assert "circuit breaker open" in reply.problem
        rule = classify(reply.observation)
        assert (rule.action, rule.reason) == (Action.RETRY, Reason.PAS_UNAVAILABLE)


async def test_the_circuit_open_reply_says_how_long_is_left(rig: Rig) -> None:
    """retry_after_s is the time until the circuit half-opens, shrinking as time passes."""
    await open_it(rig)
    first = await rig.pas.adjust(REQUEST, deadline=FAR)
    assert first.retry_after_s == pytest.approx(OPEN_S)
    rig.clock.advance(2.0)
    later = await rig.pas.adjust(REQUEST, deadline=FAR)
    assert later.retry_after_s == pytest.approx(OPEN_S - 2.0)


async def test_the_retry_after_of_an_open_circuit_is_never_below_a_floor(rig: Rig) -> None:
    """Just before the circuit half-opens, retry_after_s is 0.05 s, not (nearly) zero."""
    await open_it(rig)
    rig.clock.advance(OPEN_S - 0.001)
    reply = await rig.pas.adjust(REQUEST, deadline=FAR)
    assert is_circuit_open(reply)
    assert reply.retry_after_s == 0.05


# -- half-open: one probe --------------------------------------------------------------------


async def test_half_open_lets_exactly_one_probe_through(rig: Rig) -> None:
    """After open_s one call reaches PAS; others meanwhile get CIRCUIT_OPEN; success closes it."""
    await open_it(rig)
    rig.clock.advance(OPEN_S)
    assert rig.breaker.state is CircuitState.HALF_OPEN
    sent = len(rig.inner.requests)
    rig.script(APPLIED)
    rig.inner.gate = asyncio.Event()
    rig.inner.entered.clear()
    probe = asyncio.create_task(rig.pas.adjust(REQUEST, deadline=FAR))
    await rig.inner.entered.wait()
    others = await rig.calls(3)
    assert all(is_circuit_open(reply) for reply in others)
    assert all(reply.retry_after_s == pytest.approx(OPEN_S) for reply in others)
    assert len(rig.inner.requests) == sent + 1
    rig.inner.gate.set()
    assert await probe is APPLIED
    # mypy still holds the state narrowed by the assert above; the call changed it
    assert rig.breaker.state is CircuitState.CLOSED  # type: ignore[comparison-overlap]
    assert await rig.pas.adjust(REQUEST, deadline=FAR) is APPLIED
    assert len(rig.inner.requests) == sent + 2


async def test_a_failed_probe_opens_the_circuit_again(rig: Rig) -> None:
    """A probe that ends in a RETRY or UNKNOWN re-opens the circuit for another open_s."""
    await open_it(rig)
    rig.clock.advance(OPEN_S)
    rig.script(READ_TIMEOUT)
    assert await rig.pas.adjust(REQUEST, deadline=FAR) is READ_TIMEOUT
    assert rig.breaker.state is CircuitState.OPEN
    sent = len(rig.inner.requests)
    reply = await rig.pas.adjust(REQUEST, deadline=FAR)
    assert is_circuit_open(reply)
    assert reply.retry_after_s == pytest.approx(OPEN_S)
    assert len(rig.inner.requests) == sent


async def test_a_probe_that_ends_in_a_refusal_closes_the_circuit(rig: Rig) -> None:
    """A probe answered with a permanent refusal proves PAS is up: the circuit closes."""
    await open_it(rig)
    rig.clock.advance(OPEN_S)
    rig.script(REJECTED)
    assert await rig.pas.adjust(REQUEST, deadline=FAR) is REJECTED
    assert rig.breaker.state is CircuitState.CLOSED


async def test_a_cancelled_probe_frees_the_probe_slot(rig: Rig) -> None:
    """When the probe call is cancelled, the next call may probe at once instead of waiting."""
    await open_it(rig)
    rig.clock.advance(OPEN_S)
    rig.inner.cancel_next = True
    with pytest.raises(asyncio.CancelledError):
        await rig.pas.adjust(REQUEST, deadline=FAR)
    assert rig.breaker.state is CircuitState.HALF_OPEN
    sent = len(rig.inner.requests)
    rig.script(APPLIED)
    assert await rig.pas.adjust(REQUEST, deadline=FAR) is APPLIED
    assert len(rig.inner.requests) == sent + 1
    # mypy still holds the state narrowed by the assert above; the call changed it
    assert rig.breaker.state is CircuitState.CLOSED  # type: ignore[comparison-overlap]
