"""CircuitBreaker: opening, refusing, the single half-open probe, closing and re-opening."""

from __future__ import annotations

import pytest

from service.domain.circuit import CircuitBreaker, CircuitState
from service.settings import CircuitSettings
from tests.fakes import FakeClock

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def changes() -> list[tuple[CircuitState, CircuitState]]:
    return []


@pytest.fixture
def breaker(clock: FakeClock, changes: list[tuple[CircuitState, CircuitState]]) -> CircuitBreaker:
    return CircuitBreaker(3, 5.0, clock, on_change=lambda old, new: changes.append((old, new)))


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        assert breaker.allow()
        breaker.record_failure()


def test_a_new_breaker_is_closed_and_allows_calls(breaker: CircuitBreaker) -> None:
    """A fresh breaker is CLOSED, lets every call through and needs no wait."""
    assert breaker.state is CLOSED
    assert all(breaker.allow() for _ in range(10))
    assert breaker.retry_in() == 0.0


def test_it_opens_after_threshold_consecutive_failures(breaker: CircuitBreaker) -> None:
    """Two failures leave it closed; the third consecutive one opens it."""
    fail(breaker, 2)
    assert breaker.state is CLOSED
    assert breaker.consecutive_failures == 2

    fail(breaker, 1)

    assert breaker.state is OPEN


def test_a_success_resets_the_failure_count(breaker: CircuitBreaker) -> None:
    """Failures separated by a success are not consecutive: 2, success, 2 keeps it closed."""
    fail(breaker, 2)
    breaker.record_success()
    assert breaker.consecutive_failures == 0

    fail(breaker, 2)

    assert breaker.state is CLOSED


def test_an_open_circuit_refuses_calls_until_open_s_passed(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """While OPEN, allow() is False, up to the last instant before open_s has passed."""
    fail(breaker, 3)

    clock.advance(4.999)

    assert not breaker.allow()
    assert breaker.state is OPEN


def test_retry_in_counts_down_the_open_period(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """retry_in() is open_s right after opening, then shrinks with the clock down to 0."""
    fail(breaker, 3)
    assert breaker.retry_in() == pytest.approx(5.0)

    clock.advance(3.5)
    assert breaker.retry_in() == pytest.approx(1.5)

    clock.advance(2.0)
    assert breaker.retry_in() == 0.0


def test_after_open_s_exactly_one_probe_is_allowed(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """Once open_s passed the breaker is HALF_OPEN: the first allow() is True, the rest False."""
    fail(breaker, 3)
    clock.advance(5.0)

    assert breaker.state is HALF_OPEN
    assert breaker.allow() is True
    assert [breaker.allow() for _ in range(5)] == [False] * 5
    assert breaker.retry_in() == pytest.approx(5.0)


def test_a_successful_probe_closes_the_circuit(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """The probe's success closes the breaker; calls flow again and the count starts over."""
    fail(breaker, 3)
    clock.advance(5.0)
    assert breaker.allow()

    breaker.record_success()

    assert breaker.state is CLOSED
    assert all(breaker.allow() for _ in range(3))
    fail(breaker, 2)
    assert breaker.state is CLOSED


def test_a_failed_probe_reopens_for_another_open_period(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """The probe's failure re-opens the breaker at once, for a full open_s from then."""
    fail(breaker, 3)
    clock.advance(5.0)
    assert breaker.allow()
    clock.advance(1.0)

    breaker.record_failure()

    assert breaker.state is OPEN
    assert not breaker.allow()
    assert breaker.retry_in() == pytest.approx(5.0)
    clock.advance(5.0)
    assert breaker.allow()


def test_on_change_reports_every_transition(
    breaker: CircuitBreaker,
    clock: FakeClock,
    changes: list[tuple[CircuitState, CircuitState]],
) -> None:
    """on_change gets (old, new) for open, half-open, re-open, half-open and close, in order."""
    fail(breaker, 3)
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record_success()

    assert changes == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]


def test_no_change_is_reported_while_closed(
    breaker: CircuitBreaker, changes: list[tuple[CircuitState, CircuitState]]
) -> None:
    """Successes and failures below the threshold call on_change never."""
    fail(breaker, 2)
    breaker.record_success()

    assert changes == []


def test_late_results_while_open_are_ignored(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """Results of calls let through before opening neither close nor extend the open period."""
    fail(breaker, 3)
    clock.advance(2.0)

    breaker.record_success()
    breaker.record_failure()

    assert breaker.state is OPEN
    assert breaker.retry_in() == pytest.approx(3.0)


def test_results_in_half_open_without_a_probe_out_are_ignored(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """In HALF_OPEN before any probe went, a stray result changes nothing: the probe decides."""
    fail(breaker, 3)
    clock.advance(6.0)

    breaker.record_failure()
    breaker.record_success()

    assert breaker.state is HALF_OPEN
    assert breaker.allow()


def test_a_released_probe_lets_another_go(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """release_probe() (the probe was cancelled) lets the next allow() send a new probe."""
    fail(breaker, 3)
    clock.advance(5.0)
    assert breaker.allow()
    assert not breaker.allow()

    breaker.release_probe()

    assert breaker.allow()
    assert not breaker.allow()


def test_a_probe_that_never_reports_is_presumed_lost(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """A probe silent for probe_timeout_s (open_s by default) no longer blocks the next one."""
    fail(breaker, 3)
    clock.advance(5.0)
    assert breaker.allow()

    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.1)

    assert breaker.allow()
    assert breaker.state is HALF_OPEN


def test_a_threshold_of_one_opens_on_the_first_failure(clock: FakeClock) -> None:
    """failure_threshold=1 opens the breaker on one failure."""
    breaker = CircuitBreaker(1, 1.0, clock)

    breaker.record_failure()

    assert breaker.state is OPEN


@pytest.mark.parametrize(
    ("threshold", "open_s", "probe_timeout_s"), [(0, 1.0, None), (1, 0.0, None), (1, 1.0, 0.0)]
)
def test_nonsense_parameters_are_refused(
    clock: FakeClock, threshold: int, open_s: float, probe_timeout_s: float | None
) -> None:
    """A threshold below 1 or a non-positive open or probe time raises ValueError."""
    with pytest.raises(ValueError, match="must be"):
        CircuitBreaker(threshold, open_s, clock, probe_timeout_s=probe_timeout_s)


def test_from_settings_uses_the_circuit_settings(clock: FakeClock) -> None:
    """from_settings takes the threshold and the open time from CircuitSettings."""
    breaker = CircuitBreaker.from_settings(CircuitSettings(failure_threshold=2, open_s=7.5), clock)

    fail(breaker, 2)

    assert breaker.state is OPEN
    assert breaker.retry_in() == pytest.approx(7.5)
