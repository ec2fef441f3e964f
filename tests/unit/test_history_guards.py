"""History lookups go through the breaker, the adaptive limit and the metrics, as adjustment
calls do: GuardedHistory, LimitedHistory and MeteredHistory over a scripted history."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.domain.adaptive import AdaptiveLimit
from service.domain.circuit import CircuitBreaker, CircuitState
from service.domain.classification import Observation, Transport
from service.domain.ports import PasReply, PasRequest
from service.domain.reconcile import HistoryEntry, HistoryFailed, HistoryFound, HistoryLookup
from service.metrics import Metrics
from service.pas.guarded import GuardedHistory, GuardedPas, unhealthy
from service.pas.limited import LimitedHistory, LimitedPas
from service.pas.metered import MeteredHistory
from tests.fakes import FakeClock, FakeHistory, ScriptedPas

THRESHOLD = 3
OPEN_S = 5.0
FAR = 1e12  # a deadline far beyond any test (a time.monotonic() instant)
ACCOUNT = "5123456789012345000"
REQUEST = PasRequest(ACCOUNT, 250, "GOODWILL", "Late delivery", "agent-1", "corr-1")
APPLIED = PasReply(Observation(status=200), 0.01, points_adjusted=250)
CONNECT = PasReply(Observation(transport=Transport.CONNECT), 0.01, problem="ConnectError")

FOUND = HistoryFound([HistoryEntry("adj-1", 250, "Late delivery ref:abcdefghijkl", "t")])
INCOMPLETE = HistoryFound([], complete=False)
NO_ANSWER = HistoryFailed("ConnectError: refused", None)
UNAVAILABLE = HistoryFailed("HTTP 503", 503)
THROTTLED = HistoryFailed("HTTP 429", 429)
NOT_FOUND = HistoryFailed("HTTP 404 ACCOUNT_NOT_FOUND", 404)
DECLINED = HistoryFailed("HTTP 401 DECLINED", 401)
UNREADABLE = HistoryFailed("HTTP 200 with an unreadable history: no 'adjustments' list", 200)


def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(THRESHOLD, OPEN_S, clock)


async def look(history: GuardedHistory | LimitedHistory | MeteredHistory) -> HistoryLookup:
    return await history.lookup(ACCOUNT, correlation_id="corr-1")


# -- which lookups say PAS is unwell ------------------------------------------------------------


@pytest.mark.parametrize(
    ("lookup", "expected"),
    [
        (FOUND, False),
        (INCOMPLETE, False),
        (NO_ANSWER, True),
        (UNAVAILABLE, True),
        (THROTTLED, True),
        (NOT_FOUND, False),
        (DECLINED, False),
        (UNREADABLE, False),
    ],
    ids=["found", "incomplete", "no-answer", "503", "429", "404", "401", "unreadable-200"],
)
def test_a_lookup_is_unhealthy_as_the_classification_reads_a_call(
    lookup: HistoryLookup, expected: bool
) -> None:
    """No answer, a 429 or a 5xx say PAS is unwell; any other answer says it is up."""
    assert unhealthy(lookup) is expected


# -- GuardedHistory -----------------------------------------------------------------------------


async def test_an_open_circuit_fails_a_lookup_fast_without_sending_it() -> None:
    """While the circuit is open a lookup is HistoryFailed("circuit open") held back for the
    breaker's remaining open time (so it is not counted as a failed lookup), nothing sent."""
    clock = FakeClock()
    guard = breaker(clock)
    for _ in range(THRESHOLD):
        guard.record_failure()
    inner = FakeHistory(FOUND)

    result = await look(GuardedHistory(inner, guard))

    assert result == HistoryFailed("circuit open", None, retry_in_s=guard.retry_in())
    assert inner.accounts == []


async def test_failing_lookups_open_the_circuit_and_answers_keep_it_closed() -> None:
    """Lookups without an answer count as failures and open the circuit at the threshold; a
    refusal (404) in between says PAS is up and starts the count again."""
    clock = FakeClock()
    guard = breaker(clock)
    inner = FakeHistory(NO_ANSWER, UNAVAILABLE, NOT_FOUND, THROTTLED, NO_ANSWER, UNAVAILABLE)
    history = GuardedHistory(inner, guard)

    results = [await look(history) for _ in range(6)]

    assert results == [NO_ANSWER, UNAVAILABLE, NOT_FOUND, THROTTLED, NO_ANSWER, UNAVAILABLE]
    assert guard.state is CircuitState.OPEN
    assert await look(history) == HistoryFailed("circuit open", None, retry_in_s=OPEN_S)
    assert len(inner.accounts) == 6


async def test_adjustment_failures_and_lookups_share_one_breaker() -> None:
    """Adjustment calls that fail open the breaker the lookups go through: the next lookup
    fails fast; once the open period is over, a lookup found is the probe that closes it."""
    clock = FakeClock()
    guard = breaker(clock)
    pas = GuardedPas(ScriptedPas(CONNECT, repeat_last=True), guard)
    inner = FakeHistory(FOUND)
    history = GuardedHistory(inner, guard)
    for _ in range(THRESHOLD):
        await pas.adjust(REQUEST, deadline=FAR)

    assert await look(history) == HistoryFailed("circuit open", None, retry_in_s=OPEN_S)
    clock.advance(OPEN_S)
    assert await look(history) == FOUND
    assert guard.state is CircuitState.CLOSED


async def test_a_cancelled_lookup_frees_the_half_open_probe() -> None:
    """A lookup cancelled while it is the half-open probe lets the next request probe."""
    clock = FakeClock()
    guard = breaker(clock)
    for _ in range(THRESHOLD):
        guard.record_failure()
    clock.advance(OPEN_S)
    inner = FakeHistory(FOUND)
    inner.cancel_next = True
    history = GuardedHistory(inner, guard)

    with pytest.raises(asyncio.CancelledError):
        await look(history)

    assert guard.state is CircuitState.HALF_OPEN
    assert await look(history) == FOUND
    assert guard.state is CircuitState.CLOSED  # type: ignore[comparison-overlap]  # moved it


async def test_the_correlation_id_and_the_deadline_go_down_unchanged() -> None:
    """Each decorator passes the command's correlation id and the deadline to the next."""
    inner = FakeHistory(FOUND)
    metrics = Metrics()
    history = GuardedHistory(MeteredHistory(inner, metrics), breaker(FakeClock()))

    await history.lookup(ACCOUNT, correlation_id="corr-42", deadline=123.0)

    assert (inner.accounts, inner.correlation_ids, inner.deadlines) == (
        [ACCOUNT],
        ["corr-42"],
        [123.0],
    )


# -- LimitedHistory -----------------------------------------------------------------------------


def full(max_limit: int) -> AdaptiveLimit:
    """A limit that starts at its maximum (past slow start)."""
    return AdaptiveLimit(max_limit, time.monotonic, initial_limit=max_limit)


async def one_slot_held() -> tuple[LimitedPas, ScriptedPas, asyncio.Task[PasReply]]:
    """A LimitedPas with a single slot, taken by an adjustment call held in flight."""
    inner_pas = ScriptedPas(APPLIED)
    inner_pas.gate.clear()
    pas = LimitedPas(inner_pas, full(1))
    call = asyncio.create_task(pas.adjust(REQUEST, deadline=FAR))
    await inner_pas.entered.wait()
    return pas, inner_pas, call


async def test_a_lookup_waits_for_a_slot_an_adjustment_call_holds() -> None:
    """With one slot, taken by an adjustment call in flight, a lookup waits until the call
    is over, then runs in the freed slot."""
    pas, inner_pas, call = await one_slot_held()
    inner = FakeHistory(FOUND)
    history = LimitedHistory(inner, pas.slots, call_timeout_s=5.0)

    lookup = asyncio.create_task(look(history))
    await asyncio.sleep(0.01)
    assert inner.accounts == []
    inner_pas.gate.set()

    assert await call is APPLIED
    assert await lookup == FOUND
    assert pas.in_flight == 0


async def test_no_slot_before_the_call_deadline_fails_the_lookup_unsent() -> None:
    """A lookup that gets no slot within call_timeout_s fails without reaching PAS."""
    pas, inner_pas, call = await one_slot_held()
    inner = FakeHistory(FOUND)
    history = LimitedHistory(inner, pas.slots, call_timeout_s=0.05)
    started = time.monotonic()

    result = await look(history)

    assert time.monotonic() - started < 1.0
    assert result == HistoryFailed(
        "no PAS call slot came free before the call's deadline", None, retry_in_s=0.5
    )
    assert inner.accounts == []
    inner_pas.gate.set()
    await call
    assert pas.in_flight == 0


async def test_a_lookup_runs_under_the_call_deadline_or_the_callers() -> None:
    """Without a deadline of its own a lookup gets call_timeout_s from now, and that deadline
    goes down to the exchange; a caller's deadline is kept as given."""
    inner = FakeHistory(FOUND, FOUND)
    history = LimitedHistory(inner, LimitedPas(ScriptedPas(), full(2)).slots, 7.0)
    before = time.monotonic()

    await look(history)
    await history.lookup(ACCOUNT, deadline=before + 1.0)

    first, second = inner.deadlines
    assert first is not None
    assert before + 7.0 <= first <= time.monotonic() + 7.0
    assert second == before + 1.0


async def test_a_lookup_holds_a_slot_while_it_runs_and_gives_it_back() -> None:
    """A lookup in flight counts in the pool; done or cancelled, its slot is free again."""
    pas = LimitedPas(ScriptedPas(), full(2))
    inner = FakeHistory(FOUND)
    inner.gate.clear()
    history = LimitedHistory(inner, pas.slots, 5.0)

    running = asyncio.create_task(look(history))
    await inner.entered.wait()
    assert pas.in_flight == 1
    inner.gate.set()
    assert await running == FOUND
    assert pas.in_flight == 0

    inner.then(FOUND)
    inner.gate.clear()
    cancelled = asyncio.create_task(look(history))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert pas.in_flight == 0


async def test_lookups_do_not_teach_the_limit() -> None:
    """Failing lookups leave the adaptive limit where it was (only calls teach it)."""
    limit = full(40)
    inner = FakeHistory(UNAVAILABLE, THROTTLED, NO_ANSWER)
    history = LimitedHistory(inner, LimitedPas(ScriptedPas(), limit).slots, 5.0)

    for _ in range(3):
        await look(history)

    assert limit.limit == 40


# -- MeteredHistory -----------------------------------------------------------------------------


async def test_each_lookup_is_counted_by_result_and_status_and_timed() -> None:
    """found, incomplete and failed lookups are counted with their HTTP status (none when no
    answer came), and each one's duration is observed under its result."""
    metrics = Metrics()
    clock = FakeClock()
    inner = FakeHistory(FOUND, INCOMPLETE, UNAVAILABLE, NO_ANSWER, FOUND)
    history = MeteredHistory(inner, metrics, clock)

    for _ in range(5):  # each lookup takes 0.25 s on the fake clock
        inner.entered.clear()
        inner.gate.clear()
        task = asyncio.create_task(look(history))
        await inner.entered.wait()
        clock.advance(0.25)
        inner.gate.set()
        await task

    def count(result: str, status: str) -> float | None:
        return metrics.registry.get_sample_value(
            "points_adjuster_pas_history_requests_total", {"result": result, "status": status}
        )

    assert count("found", "200") == 2
    assert count("incomplete", "200") == 1
    assert count("failed", "503") == 1
    assert count("failed", "none") == 1
    duration = "points_adjuster_pas_history_request_duration_seconds"
    assert metrics.registry.get_sample_value(f"{duration}_count", {"result": "found"}) == 2
    assert metrics.registry.get_sample_value(f"{duration}_sum", {"result": "failed"}) == 0.5
