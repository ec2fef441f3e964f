"""BackoffPolicy and deadline_passed: growth, cap, full jitter, Retry-After, command TTL."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from service.domain.backoff import BackoffPolicy, deadline_passed
from service.settings import RetrySettings

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_without_jitter_the_delay_doubles_from_the_initial_value() -> None:
    """Attempt 1 waits initial_s and each further attempt multiplies the wait by the multiplier."""
    policy = BackoffPolicy(0.5, 100.0, jitter=False)

    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_a_custom_multiplier_is_used() -> None:
    """With multiplier 3 the waits grow by three each attempt."""
    policy = BackoffPolicy(1.0, 100.0, multiplier=3.0, jitter=False)

    assert [policy.delay(n) for n in range(1, 5)] == [1.0, 3.0, 9.0, 27.0]


def test_the_delay_is_capped_at_max_s() -> None:
    """Past the cap every attempt waits max_s, even for attempts whose growth overflows a float."""
    policy = BackoffPolicy(0.5, 30.0, jitter=False)

    assert policy.delay(7) == 30.0
    assert policy.delay(50) == 30.0
    assert policy.delay(100_000) == 30.0


def test_full_jitter_stays_within_zero_and_the_capped_backoff() -> None:
    """With jitter each delay is drawn in [0, capped backoff] and the draws actually vary."""
    policy = BackoffPolicy(1.0, 10.0, rng=random.Random(7))

    for attempt in (1, 2, 3, 4, 5, 9):
        ceiling = min(10.0, 2.0 ** (attempt - 1))
        draws = [policy.delay(attempt) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert len(set(draws)) > 100
        assert max(draws) > ceiling * 0.9
        assert min(draws) < ceiling * 0.1


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    """Two policies with the same seed give the same sequence of delays."""
    first = BackoffPolicy(0.5, 30.0, rng=random.Random(42))
    second = BackoffPolicy(0.5, 30.0, rng=random.Random(42))

    assert [first.delay(n) for n in range(1, 8)] == [second.delay(n) for n in range(1, 8)]


def test_retry_after_is_a_floor_even_above_the_cap() -> None:
    """A Retry-After longer than the backoff (and than max_s) is waited in full."""
    policy = BackoffPolicy(0.5, 30.0, rng=random.Random(1))

    assert policy.delay(1, retry_after_s=2.0) == 2.0
    assert policy.delay(3, retry_after_s=120.0) == 120.0


def test_a_short_retry_after_does_not_shorten_the_backoff() -> None:
    """A Retry-After shorter than the computed backoff leaves the backoff as it is."""
    policy = BackoffPolicy(4.0, 30.0, jitter=False)

    assert policy.delay(2, retry_after_s=1.0) == 8.0


@pytest.mark.parametrize("retry_after", [-5.0, 0.0, float("nan"), float("inf")])
def test_a_meaningless_retry_after_is_ignored(retry_after: float) -> None:
    """A zero, negative or non-finite Retry-After is ignored rather than waited."""
    policy = BackoffPolicy(1.0, 30.0, jitter=False)

    assert policy.delay(2, retry_after_s=retry_after) == 2.0


def test_a_zero_initial_backoff_never_waits() -> None:
    """initial_s 0 means retry at once, with or without jitter."""
    assert BackoffPolicy(0.0, 30.0, rng=random.Random(3)).delay(5) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_s": -1.0, "max_s": 1.0},
        {"initial_s": 1.0, "max_s": -1.0},
        {"initial_s": 1.0, "max_s": float("inf")},
        {"initial_s": 1.0, "max_s": 1.0, "multiplier": 0.5},
    ],
)
def test_nonsense_parameters_are_refused(kwargs: dict[str, float]) -> None:
    """Negative or infinite times and a shrinking multiplier raise ValueError."""
    with pytest.raises(ValueError, match="must be"):
        BackoffPolicy(**kwargs)  # type: ignore[arg-type]


def test_attempts_are_one_based() -> None:
    """Attempt 0 is a caller bug and raises ValueError."""
    with pytest.raises(ValueError, match="1-based"):
        BackoffPolicy(1.0, 2.0).delay(0)


def test_from_settings_uses_the_retry_settings() -> None:
    """from_settings takes initial, cap and jitter from RetrySettings."""
    settings = RetrySettings(initial_backoff_s=0.25, max_backoff_s=1.0, jitter=False)

    policy = BackoffPolicy.from_settings(settings)

    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.25, 0.5, 1.0, 1.0]
    assert BackoffPolicy.from_settings(RetrySettings()).jitter is True


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (timedelta(seconds=0), False),
        (timedelta(seconds=59.999), False),
        (timedelta(seconds=60), False),
        (timedelta(seconds=60.001), True),
        (timedelta(days=2), True),
        (timedelta(seconds=-30), False),
    ],
    ids=["new", "just-inside", "exactly-ttl", "just-past", "days-old", "from-the-future"],
)
def test_deadline_passes_only_when_older_than_the_ttl(age: timedelta, expected: bool) -> None:
    """A command is expired only when strictly more than ttl_s separates it from now."""
    assert deadline_passed(T0, T0 + age, 60.0) is expected


def test_deadline_compares_across_time_zones() -> None:
    """Aware datetimes in different zones are compared as instants."""
    occurred = datetime(2024, 5, 1, 14, 0, tzinfo=UTC) - timedelta(hours=2)
    now_elsewhere = (T0 + timedelta(seconds=61)).astimezone(timezone(timedelta(hours=-4)))

    assert deadline_passed(occurred, now_elsewhere, 60.0) is True
