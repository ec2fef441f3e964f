"""The metered idempotency store: every call of the wrapped store timed and its failures
counted, by operation, with nothing else in a label."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.domain.decisions import InboundRecord
from service.domain.outcome import Outcome
from service.domain.store import (
    ClaimStatus,
    IdempotencyStore,
    OwnershipLostError,
    State,
    StoreUnavailableError,
)
from service.idempotency.memory import MemoryStore
from service.idempotency.metered import OPERATIONS, MeteredStore
from service.metrics import Metrics
from tests.unit.test_runner import completed
from tests.unit.test_runner_lag import Clock

NOW = datetime(2026, 1, 1, tzinfo=UTC)
KEY = "key-0"


def count(metrics: Metrics, operation: str) -> float | None:
    return metrics.registry.get_sample_value(
        "points_adjuster_store_operation_duration_seconds_count", {"operation": operation}
    )


def errors(metrics: Metrics, operation: str) -> float | None:
    return metrics.registry.get_sample_value(
        "points_adjuster_store_errors_total", {"operation": operation}
    )


class StepClock(Clock):
    """A clock that moves ``step`` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        super().__init__(0.0)
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class FullDisk(MemoryStore):
    """A store whose writes fail like SQLite on a full disk."""

    async def finish(
        self,
        key: str,
        *,
        owner: str,
        token: int,
        state: State,
        outcome: Outcome,
        attempts: int,
        now: datetime,
    ) -> None:
        raise StoreUnavailableError("disk full", store="memory")


async def test_every_operation_is_timed_under_its_own_name() -> None:
    """Each of the nine operations, called once through the wrapper, adds one observation to
    its own series (with the duration the clock saw) and does what the wrapped store does."""
    metrics = Metrics()
    store: IdempotencyStore = MeteredStore(MemoryStore(), metrics, clock=StepClock(0.002))
    claim = await store.claim(KEY, "fp", owner="w1", now=NOW, lease_s=30)
    assert claim.status is ClaimStatus.CLAIMED
    later = NOW + timedelta(seconds=60)
    await store.park(KEY, owner="w1", token=1, now=NOW, settle_until=NOW, lease_until=later)
    await store.resume(KEY, owner="w1", token=1, lease_until=later, now=NOW)
    await store.finish(
        KEY,
        owner="w1",
        token=1,
        state=State.COMPLETED,
        outcome=completed_outcome(),
        attempts=1,
        now=NOW,
    )
    await store.mark_published(KEY)
    record = await store.get(KEY)
    assert record is not None
    assert record.published
    await store.claim("key-1", "fp", owner="w1", now=NOW, lease_s=30)
    await store.release("key-1", owner="w1", token=1, now=NOW)
    assert await store.prune(older_than=later) == 2  # the finished key and the released one
    await store.probe()
    for operation in OPERATIONS:
        expected = 2 if operation == "claim" else 1
        assert count(metrics, operation) == expected, operation
        assert errors(metrics, operation) == 0, operation
    seconds = metrics.registry.get_sample_value(
        "points_adjuster_store_operation_duration_seconds_sum", {"operation": "get"}
    )
    assert seconds == pytest.approx(0.002)


def completed_outcome() -> Outcome:
    """A completed outcome to store (the runner tests' record 0)."""
    return completed(InboundRecord("commands", 0, 0, b"k", b"v", 0)).outcome


async def test_a_failing_call_is_counted_and_raised_unchanged() -> None:
    """A store error is counted under its operation, still timed, and reaches the caller."""
    metrics = Metrics()
    store = MeteredStore(FullDisk(), metrics)
    await store.claim(KEY, "fp", owner="w1", now=NOW, lease_s=30)
    with pytest.raises(StoreUnavailableError, match="disk full"):
        await store.finish(
            KEY,
            owner="w1",
            token=1,
            state=State.COMPLETED,
            outcome=completed_outcome(),
            attempts=1,
            now=NOW,
        )
    assert (errors(metrics, "finish"), count(metrics, "finish")) == (1, 1)
    assert errors(metrics, "claim") == 0


async def test_a_claim_lost_to_another_worker_is_not_a_store_error() -> None:
    """OwnershipLostError (another worker took the record over) passes through uncounted."""
    metrics = Metrics()
    store = MeteredStore(MemoryStore(), metrics)
    await store.claim(KEY, "fp", owner="w1", now=NOW, lease_s=30)
    with pytest.raises(OwnershipLostError):
        await store.park(
            KEY, owner="somebody-else", token=1, now=NOW, settle_until=NOW, lease_until=NOW
        )
    assert (errors(metrics, "park"), count(metrics, "park")) == (0, 1)


async def test_identity_and_state_pass_through_and_labels_name_only_the_operation() -> None:
    """The wrapper shows the wrapped store's identity, newness and problem; its series carry
    the operation alone, one of the nine known names (never a key or an owner)."""
    metrics = Metrics()
    inner = MemoryStore()
    store = MeteredStore(inner, metrics)
    assert (store.identity, store.created, store.problem) == (
        inner.identity,
        inner.created,
        inner.problem,
    )
    await store.adopt()
    await store.claim("acct-5123456789012345", "fp", owner="host-1-abc", now=NOW, lease_s=30)
    await store.close()
    seen: set[tuple[str, str]] = set()
    for family in metrics.registry.collect():
        if family.name.startswith("points_adjuster_store_"):
            for s in family.samples:
                seen.update(s.labels.items())
    assert {value for name, value in seen if name == "operation"} == set(OPERATIONS)
    assert {name for name, _ in seen} <= {"operation", "le"}
