"""The idempotency store contract, run against every backend (memory and SQLite)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.idempotency.base import ClaimStatus, IdempotencyStore, State
from service.idempotency.memory import MemoryStore
from service.idempotency.sqlite import SqliteStore

T0 = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
LEASE_S = 60.0
KEY = "case-1234-credit"
FP = "a" * 64
OTHER_FP = "b" * 64
ME = "worker-a"
OTHER = "worker-b"
OUTCOME: dict[str, Any] = {
    "event_id": "e-1",
    "points_adjusted": 250,
    "source": {"topic": "t", "partition": 1, "offset": 7},
    "errors": [{"reason_code": "X", "field": None}],
    "metadata": {"case": "1234"},
}

Reopen = Callable[[], Awaitable[IdempotencyStore]]


class Backend:
    """One store under test, and a way to look at its data through a fresh store."""

    def __init__(self, store: IdempotencyStore, reopen: Reopen) -> None:
        self.store = store
        self.reopen = reopen


@pytest.fixture(params=["memory", "sqlite"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    opened: list[IdempotencyStore] = []
    if request.param == "memory":
        memory = MemoryStore()

        async def same_memory() -> IdempotencyStore:
            return memory  # nothing outlives the process: the same dict is all there is

        yield Backend(memory, same_memory)
        await memory.close()
        return
    path = tmp_path / "db" / "idempotency.sqlite3"
    first = await SqliteStore.open(path)
    opened.append(first)

    async def reopen_file() -> IdempotencyStore:
        again = await SqliteStore.open(path)
        opened.append(again)
        return again

    try:
        yield Backend(first, reopen_file)
    finally:
        for store in opened:
            await store.close()


@pytest.fixture
def store(backend: Backend) -> IdempotencyStore:
    return backend.store


async def claim(
    store: IdempotencyStore,
    *,
    fingerprint: str = FP,
    owner: str = ME,
    now: datetime = T0,
    key: str = KEY,
) -> Any:
    return await store.claim(key, fingerprint, owner=owner, now=now, lease_s=LEASE_S)


async def finish(
    store: IdempotencyStore,
    *,
    owner: str = ME,
    state: State = State.COMPLETED,
    now: datetime = T0 + timedelta(seconds=2),
    attempts: int = 1,
) -> None:
    await store.finish(
        KEY,
        owner=owner,
        state=state,
        outcome_kind="completed",
        outcome=OUTCOME,
        attempts=attempts,
        now=now,
    )


async def test_claim_of_a_new_key_is_claimed_and_durable(backend: Backend) -> None:
    """A new key is CLAIMED as an IN_FLIGHT record with a lease, visible to a reopened store."""
    result = await claim(backend.store)
    assert result.status is ClaimStatus.CLAIMED
    assert result.record.state is State.IN_FLIGHT
    assert result.record.owner == ME
    assert result.record.lease_until == T0 + timedelta(seconds=LEASE_S)
    reopened = await backend.reopen()
    seen = await reopened.get(KEY)
    assert seen is not None
    assert seen.key == KEY
    assert seen.fingerprint == FP
    assert seen.state is State.IN_FLIGHT
    assert seen.owner == ME
    assert seen.lease_until == T0 + timedelta(seconds=LEASE_S)
    assert seen.attempts == 0
    assert seen.created_at == T0
    assert seen.outcome is None
    assert seen.outcome_kind is None
    assert seen.published is False


async def test_get_of_an_unknown_key_is_none(store: IdempotencyStore) -> None:
    """get returns None for a key never claimed."""
    assert await store.get("never-seen") is None


@pytest.mark.parametrize("state", [State.COMPLETED, State.FAILED, State.UNKNOWN])
async def test_same_fingerprint_after_finish_is_duplicate_with_stored_outcome(
    backend: Backend, state: State
) -> None:
    """A repeat of a finished key with the same fingerprint is DUPLICATE and carries the outcome."""
    await claim(backend.store)
    await finish(backend.store, state=state, attempts=3)
    result = await claim(backend.store, owner=OTHER, now=T0 + timedelta(hours=5))
    assert result.status is ClaimStatus.DUPLICATE
    assert result.record.state is state
    assert result.record.outcome == OUTCOME
    assert result.record.outcome_kind == "completed"
    assert result.record.attempts == 3
    assert result.record.owner == ME
    reopened = await backend.reopen()
    stored = await reopened.get(KEY)
    assert stored is not None
    assert stored.outcome == OUTCOME
    assert stored.state is state


@pytest.mark.parametrize("finished", [True, False], ids=["finished", "in-flight"])
async def test_different_fingerprint_is_conflict_and_leaves_record(
    store: IdempotencyStore, finished: bool
) -> None:
    """A claim with another fingerprint is CONFLICT and the stored record is not changed."""
    await claim(store)
    if finished:
        await finish(store)
    before = await store.get(KEY)
    result = await claim(
        store, fingerprint=OTHER_FP, owner=OTHER, now=T0 + timedelta(seconds=LEASE_S * 10)
    )
    assert result.status is ClaimStatus.CONFLICT
    assert result.record == before
    assert await store.get(KEY) == before


async def test_live_lease_of_another_owner_is_busy(store: IdempotencyStore) -> None:
    """A claim while another owner's lease is live is BUSY and does not change the owner."""
    await claim(store, owner=OTHER)
    before = await store.get(KEY)
    result = await claim(store, now=T0 + timedelta(seconds=LEASE_S - 1))
    assert result.status is ClaimStatus.BUSY
    assert result.record.owner == OTHER
    assert await store.get(KEY) == before


@pytest.mark.parametrize("after_s", [LEASE_S, LEASE_S + 1, LEASE_S * 100])
async def test_expired_lease_is_taken_over(backend: Backend, after_s: float) -> None:
    """Once another owner's lease has run out, the claim is TAKEN_OVER and ownership moves."""
    await claim(backend.store, owner=OTHER)
    later = T0 + timedelta(seconds=after_s)
    result = await claim(backend.store, now=later)
    assert result.status is ClaimStatus.TAKEN_OVER
    assert result.record.owner == ME
    assert result.record.state is State.IN_FLIGHT
    assert result.record.lease_until == later + timedelta(seconds=LEASE_S)
    reopened = await backend.reopen()
    stored = await reopened.get(KEY)
    assert stored is not None
    assert stored.owner == ME
    assert stored.created_at == T0


async def test_previous_owner_cannot_finish_after_takeover(store: IdempotencyStore) -> None:
    """The owner whose lease was taken over can no longer finish the record."""
    await claim(store, owner=OTHER)
    await claim(store, now=T0 + timedelta(seconds=LEASE_S + 1))
    with pytest.raises(RuntimeError):
        await finish(store, owner=OTHER)
    record = await store.get(KEY)
    assert record is not None
    assert record.state is State.IN_FLIGHT
    assert record.owner == ME


async def test_finish_stores_state_outcome_and_attempts(backend: Backend) -> None:
    """finish by the owner stores the terminal state, outcome kind, outcome and attempts."""
    await claim(backend.store)
    await finish(backend.store, state=State.UNKNOWN, attempts=2, now=T0 + timedelta(seconds=9))
    reopened = await backend.reopen()
    record = await reopened.get(KEY)
    assert record is not None
    assert record.state is State.UNKNOWN
    assert record.outcome_kind == "completed"
    assert record.outcome == OUTCOME
    assert record.attempts == 2
    assert record.updated_at == T0 + timedelta(seconds=9)
    assert record.published is False


async def test_finish_by_a_non_owner_raises(store: IdempotencyStore) -> None:
    """finish by a worker that does not own the claim raises and changes nothing."""
    await claim(store)
    before = await store.get(KEY)
    with pytest.raises(RuntimeError):
        await finish(store, owner=OTHER)
    assert await store.get(KEY) == before


async def test_release_deletes_the_in_flight_claim_of_its_owner(store: IdempotencyStore) -> None:
    """release by the owner deletes an IN_FLIGHT claim, so the key can be claimed afresh."""
    await claim(store)
    await store.release(KEY, owner=ME)
    assert await store.get(KEY) is None
    again = await claim(store, owner=OTHER, now=T0 + timedelta(seconds=1))
    assert again.status is ClaimStatus.CLAIMED
    assert again.record.owner == OTHER


async def test_release_by_another_owner_keeps_the_claim(store: IdempotencyStore) -> None:
    """release by a worker that does not own the claim deletes nothing."""
    await claim(store)
    before = await store.get(KEY)
    await store.release(KEY, owner=OTHER)
    assert await store.get(KEY) == before


async def test_release_keeps_a_finished_record(store: IdempotencyStore) -> None:
    """release never deletes a terminal record, even for its owner."""
    await claim(store)
    await finish(store)
    before = await store.get(KEY)
    await store.release(KEY, owner=ME)
    assert await store.get(KEY) == before


async def test_release_of_an_unknown_key_is_harmless(store: IdempotencyStore) -> None:
    """release of a key that does not exist does nothing and does not raise."""
    await store.release("never-seen", owner=ME)
    assert await store.get("never-seen") is None


async def test_mark_published_sets_the_flag_only(backend: Backend) -> None:
    """mark_published flags the record as published and leaves the rest as it was."""
    await claim(backend.store)
    await finish(backend.store)
    before = await backend.store.get(KEY)
    await backend.store.mark_published(KEY)
    reopened = await backend.reopen()
    after = await reopened.get(KEY)
    assert before is not None
    assert after is not None
    assert before.published is False
    assert after.published is True
    assert (after.state, after.outcome, after.owner, after.attempts) == (
        before.state,
        before.outcome,
        before.owner,
        before.attempts,
    )
    duplicate = await claim(reopened, owner=OTHER, now=T0 + timedelta(hours=1))
    assert duplicate.status is ClaimStatus.DUPLICATE
    assert duplicate.record.published is True


async def test_mark_published_of_an_unknown_key_is_harmless(store: IdempotencyStore) -> None:
    """mark_published of a key that does not exist neither raises nor creates a record."""
    await store.mark_published("never-seen")
    assert await store.get("never-seen") is None


async def test_keys_are_independent(store: IdempotencyStore) -> None:
    """Claims on different keys do not interfere."""
    first = await claim(store, key="k-1", owner=OTHER)
    second = await claim(store, key="k-2", fingerprint=OTHER_FP)
    assert first.status is ClaimStatus.CLAIMED
    assert second.status is ClaimStatus.CLAIMED
    one = await store.get("k-1")
    two = await store.get("k-2")
    assert one is not None
    assert two is not None
    assert (one.owner, one.fingerprint) == (OTHER, FP)
    assert (two.owner, two.fingerprint) == (ME, OTHER_FP)
