"""The idempotency store contract, run against every backend (memory and SQLite)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.domain.outcome import CommandInfo, Completed, ErrorDetail, Failed, SourceRef
from service.errors import PointsAdjusterError, StartupError
from service.idempotency.base import (
    ClaimStatus,
    IdempotencyStore,
    OwnershipLostError,
    State,
    StoreError,
    StoreLostError,
    StoreUnavailableError,
)
from service.idempotency.continuity import check_continuity, verify_continuity
from service.idempotency.memory import MemoryStore
from service.idempotency.sqlite import SqliteStore
from service.settings import IdempotencySettings, KafkaSettings

T0 = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
LEASE_S = 60.0
KEY = "case-1234-credit"
FP = "a" * 64
OTHER_FP = "b" * 64
ME = "worker-a"
OTHER = "worker-b"
OUTCOME = Failed(
    info=CommandInfo(
        idempotency_key=KEY,
        correlation_id="corr-1",
        requested_by="crm",
        account_ref="acct-0123456789abcdef0123456789abcdef",
        account_masked="***************5000",
        command_occurred_at=T0 - timedelta(minutes=5),
        received_at=T0,
        source=SourceRef("t", 1, 7),
        metadata={"case": "1234"},
    ),
    reason_code="PAS_REJECTED",
    description="PAS did not apply the adjustment: HTTP 400 X",
    retryable=False,
    failed_at=T0 + timedelta(milliseconds=1500),
    errors=(ErrorDetail("rewards-points-api", "X", "bad", False, None),),
    http_status=400,
    attempts=1,
    service_version="0.4.0",
)

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


async def held(store: IdempotencyStore, key: str = KEY) -> int:
    """The fencing token the key's record carries now (1 when there is none): what its
    holder was given, so a write naming it fails only for a wrong owner."""
    record = await store.get(key)
    return 1 if record is None else record.token


async def finish(
    store: IdempotencyStore,
    *,
    owner: str = ME,
    state: State = State.COMPLETED,
    now: datetime = T0 + timedelta(seconds=2),
    attempts: int = 1,
    token: int | None = None,
) -> None:
    await store.finish(
        KEY,
        owner=owner,
        token=await held(store) if token is None else token,
        state=state,
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
    """finish by the owner stores the terminal state, the outcome and the attempts."""
    await claim(backend.store)
    await finish(backend.store, state=State.UNKNOWN, attempts=2, now=T0 + timedelta(seconds=9))
    reopened = await backend.reopen()
    record = await reopened.get(KEY)
    assert record is not None
    assert record.state is State.UNKNOWN
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


async def test_release_marks_the_claim_released_and_keeps_its_fingerprint(
    backend: Backend,
) -> None:
    """release by the owner turns an IN_FLIGHT claim RELEASED (durably): the same command
    takes the key again, CLAIMED under the next token, with nothing of the earlier try left."""
    store = backend.store
    await claim(store)
    await store.release(KEY, owner=ME, token=1, now=T0 + timedelta(seconds=3))
    reopened = await backend.reopen()
    released = await reopened.get(KEY)
    assert released is not None
    assert (released.state, released.fingerprint, released.token) == (State.RELEASED, FP, 1)
    assert released.updated_at == T0 + timedelta(seconds=3)
    again = await claim(reopened, owner=OTHER, now=T0 + timedelta(seconds=4))
    assert again.status is ClaimStatus.CLAIMED
    assert (again.record.state, again.record.owner, again.record.token) == (
        State.IN_FLIGHT,
        OTHER,
        2,
    )
    assert again.record.lease_until == T0 + timedelta(seconds=4 + LEASE_S)
    assert (again.record.outcome, again.record.published, again.record.settle_until) == (
        None,
        False,
        None,
    )
    assert again.record.created_at == T0


async def test_a_released_key_refuses_another_command_the_first_written_wins(
    store: IdempotencyStore,
) -> None:
    """Another fingerprint under a released key is CONFLICT, and the record stays the first
    command's: a later command never takes the key of one waiting for a retry or a replay."""
    await claim(store)
    await store.release(KEY, owner=ME, token=1, now=T0)
    before = await store.get(KEY)
    conflict = await claim(store, fingerprint=OTHER_FP, owner=OTHER, now=T0 + timedelta(hours=2))
    assert conflict.status is ClaimStatus.CONFLICT
    assert await store.get(KEY) == before
    replay = await claim(store, now=T0 + timedelta(hours=3))
    assert replay.status is ClaimStatus.CLAIMED


async def test_a_stale_token_of_the_same_owner_cannot_write(store: IdempotencyStore) -> None:
    """The fence is the token, not only the owner: a key that came back to the same owner
    under a newer token refuses a write that names the older one."""
    await claim(store)
    taken = await claim(store, now=T0 + timedelta(seconds=LEASE_S))  # its own lapsed lease
    assert (taken.status, taken.record.token) == (ClaimStatus.TAKEN_OVER, 2)
    before = await store.get(KEY)
    with pytest.raises(OwnershipLostError):
        await finish(store, token=1)
    with pytest.raises(OwnershipLostError):
        await park(store, token=1)
    with pytest.raises(OwnershipLostError):
        await store.resume(KEY, owner=ME, token=1, lease_until=T0, now=T0)
    await store.release(KEY, owner=ME, token=1, now=T0)
    assert await store.get(KEY) == before
    await finish(store, token=2)
    finished = await store.get(KEY)
    assert finished is not None
    assert finished.state is State.COMPLETED


async def test_every_change_of_hands_increments_the_token(store: IdempotencyStore) -> None:
    """1 at the first claim; +1 at a takeover, at a RECONCILE claim and at a released key
    claimed again; a BUSY, DUPLICATE or CONFLICT answer changes nothing."""
    first = await claim(store)
    assert first.record.token == 1
    busy = await claim(store, owner=OTHER, now=T0 + timedelta(seconds=1))
    assert (busy.status, busy.record.token) == (ClaimStatus.BUSY, 1)
    taken = await claim(store, owner=OTHER, now=T0 + timedelta(seconds=LEASE_S))
    assert (taken.status, taken.record.token) == (ClaimStatus.TAKEN_OVER, 2)
    await park(store, owner=OTHER, lease_until=T0 + timedelta(seconds=200))
    reconcile = await claim(store, owner=OTHER, now=T0 + timedelta(seconds=100))
    assert (reconcile.status, reconcile.record.token) == (ClaimStatus.RECONCILE, 3)
    await store.resume(KEY, owner=OTHER, token=3, lease_until=T0 + timedelta(seconds=300), now=T0)
    await store.release(KEY, owner=OTHER, token=3, now=T0)
    again = await claim(store, now=T0 + timedelta(seconds=101))
    assert (again.status, again.record.token) == (ClaimStatus.CLAIMED, 4)
    await finish(store, token=4)
    duplicate = await claim(store, owner=OTHER, now=T0 + timedelta(seconds=102))
    conflict = await claim(
        store, fingerprint=OTHER_FP, owner=OTHER, now=T0 + timedelta(seconds=103)
    )
    assert (duplicate.status, duplicate.record.token) == (ClaimStatus.DUPLICATE, 4)
    assert (conflict.status, conflict.record.token) == (ClaimStatus.CONFLICT, 4)


async def test_release_by_another_owner_keeps_the_claim(store: IdempotencyStore) -> None:
    """release by a worker that does not own the claim deletes nothing."""
    await claim(store)
    before = await store.get(KEY)
    await store.release(KEY, owner=OTHER, token=await held(store, KEY), now=T0)
    assert await store.get(KEY) == before


async def test_release_keeps_a_finished_record(store: IdempotencyStore) -> None:
    """release never deletes a terminal record, even for its owner."""
    await claim(store)
    await finish(store)
    before = await store.get(KEY)
    await store.release(KEY, owner=ME, token=await held(store, KEY), now=T0)
    assert await store.get(KEY) == before


async def test_release_of_an_unknown_key_is_harmless(store: IdempotencyStore) -> None:
    """release of a key that does not exist does nothing and does not raise."""
    await store.release("never-seen", owner=ME, token=await held(store, "never-seen"), now=T0)
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


# -- own live claims, park and resume, RECONCILE -----------------------------------------------


async def park(
    store: IdempotencyStore,
    *,
    owner: str = ME,
    lease_until: datetime = T0 + timedelta(seconds=90),
    settle_until: datetime = T0 + timedelta(seconds=30),
    now: datetime = T0 + timedelta(seconds=1),
    key: str = KEY,
    token: int | None = None,
) -> None:
    await store.park(
        key,
        owner=owner,
        token=await held(store, key) if token is None else token,
        now=now,
        settle_until=settle_until,
        lease_until=lease_until,
    )


async def test_own_live_in_flight_claim_is_busy(store: IdempotencyStore) -> None:
    """Claiming a key this owner already holds IN_FLIGHT under a live lease is BUSY, unchanged."""
    await claim(store)
    before = await store.get(KEY)
    result = await claim(store, now=T0 + timedelta(seconds=LEASE_S - 1))
    assert result.status is ClaimStatus.BUSY
    assert result.record == before
    assert await store.get(KEY) == before


async def test_own_expired_in_flight_claim_is_taken_over(store: IdempotencyStore) -> None:
    """This owner's own IN_FLIGHT claim whose lease ran out is TAKEN_OVER, never CLAIMED afresh."""
    await claim(store)
    later = T0 + timedelta(seconds=LEASE_S)
    result = await claim(store, now=later)
    assert result.status is ClaimStatus.TAKEN_OVER
    assert result.record.lease_until == later + timedelta(seconds=LEASE_S)


async def test_park_moves_the_claim_to_reconciling_with_its_times(backend: Backend) -> None:
    """park by the owner stores RECONCILING with the given lease and settle times, durably."""
    await claim(backend.store)
    claimed = await backend.store.get(KEY)
    assert claimed is not None
    assert claimed.settle_until is None
    lease_until = T0 + timedelta(seconds=200)
    settle_until = T0 + timedelta(seconds=140)
    await park(
        backend.store,
        lease_until=lease_until,
        settle_until=settle_until,
        now=T0 + timedelta(seconds=3),
    )
    reopened = await backend.reopen()
    record = await reopened.get(KEY)
    assert record is not None
    assert record.state is State.RECONCILING
    assert record.owner == ME
    assert record.lease_until == lease_until
    assert record.settle_until == settle_until
    assert record.updated_at == T0 + timedelta(seconds=3)
    assert record.created_at == T0
    assert record.outcome is None


@pytest.mark.parametrize("after_s", [1, 89, 500])
async def test_a_parked_key_is_reconcile_for_its_owner_at_any_time(
    store: IdempotencyStore, after_s: float
) -> None:
    """The owner of a RECONCILING record gets RECONCILE, before or after its lease ends."""
    await claim(store)
    await park(store)
    now = T0 + timedelta(seconds=after_s)
    result = await claim(store, now=now)
    assert result.status is ClaimStatus.RECONCILE
    assert result.record.state is State.RECONCILING
    assert result.record.owner == ME
    assert result.record.lease_until == now + timedelta(seconds=LEASE_S)


async def test_a_parked_key_is_busy_for_others_while_its_lease_is_live(
    store: IdempotencyStore,
) -> None:
    """Another owner claiming a RECONCILING record before its lease ends gets BUSY, unchanged."""
    await claim(store)
    await park(store, lease_until=T0 + timedelta(seconds=90))
    before = await store.get(KEY)
    result = await claim(store, owner=OTHER, now=T0 + timedelta(seconds=89))
    assert result.status is ClaimStatus.BUSY
    assert result.record.owner == ME
    assert await store.get(KEY) == before


@pytest.mark.parametrize("after_s", [90, 91, 10_000])
async def test_a_parked_key_whose_lease_ended_is_reconcile_for_anyone(
    backend: Backend, after_s: float
) -> None:
    """Once a RECONCILING record's lease has ended another owner gets RECONCILE and owns it."""
    await claim(backend.store)
    await park(backend.store, lease_until=T0 + timedelta(seconds=90))
    now = T0 + timedelta(seconds=after_s)
    result = await claim(backend.store, owner=OTHER, now=now)
    assert result.status is ClaimStatus.RECONCILE
    assert result.record.owner == OTHER
    assert result.record.state is State.RECONCILING
    reopened = await backend.reopen()
    stored = await reopened.get(KEY)
    assert stored is not None
    assert (stored.owner, stored.state) == (OTHER, State.RECONCILING)
    assert stored.lease_until == now + timedelta(seconds=LEASE_S)


@pytest.mark.parametrize(
    ("owner", "after_s"), [(ME, 10), (ME, 500), (OTHER, 91)], ids=["own", "own-late", "other"]
)
async def test_a_reconcile_claim_keeps_the_settle_time(
    backend: Backend, owner: str, after_s: float
) -> None:
    """The settle time noted by park survives a RECONCILE claim (by anyone) and a reopen."""
    settle_until = T0 + timedelta(seconds=30)
    await claim(backend.store)
    await park(backend.store, settle_until=settle_until, lease_until=T0 + timedelta(seconds=90))
    result = await claim(backend.store, owner=owner, now=T0 + timedelta(seconds=after_s))
    assert result.status is ClaimStatus.RECONCILE
    assert result.record.settle_until == settle_until
    reopened = await backend.reopen()
    stored = await reopened.get(KEY)
    assert stored is not None
    assert stored.settle_until == settle_until


async def test_parking_again_replaces_the_settle_time(store: IdempotencyStore) -> None:
    """A second park (after another unknown outcome) notes the new settle time."""
    await claim(store)
    await park(store)
    later = T0 + timedelta(seconds=300)
    await park(store, settle_until=later, lease_until=later + timedelta(seconds=60), now=later)
    record = await store.get(KEY)
    assert record is not None
    assert (record.settle_until, record.lease_until) == (later, later + timedelta(seconds=60))


async def test_a_parked_key_with_another_fingerprint_is_conflict(store: IdempotencyStore) -> None:
    """A RECONCILING record still refuses different business fields with CONFLICT."""
    await claim(store)
    await park(store)
    result = await claim(store, fingerprint=OTHER_FP, now=T0 + timedelta(seconds=2))
    assert result.status is ClaimStatus.CONFLICT
    assert result.record.state is State.RECONCILING


async def test_resume_moves_a_parked_claim_back_in_flight(backend: Backend) -> None:
    """resume by the owner turns RECONCILING into IN_FLIGHT with the new lease, durably."""
    await claim(backend.store)
    await park(backend.store)
    lease_until = T0 + timedelta(seconds=300)
    await backend.store.resume(
        KEY,
        owner=ME,
        token=await held(backend.store, KEY),
        lease_until=lease_until,
        now=T0 + timedelta(seconds=240),
    )
    reopened = await backend.reopen()
    record = await reopened.get(KEY)
    assert record is not None
    assert (record.state, record.owner, record.lease_until) == (State.IN_FLIGHT, ME, lease_until)
    assert record.updated_at == T0 + timedelta(seconds=240)
    busy = await claim(reopened, owner=OTHER, now=T0 + timedelta(seconds=299))
    assert busy.status is ClaimStatus.BUSY


async def test_a_resumed_claim_can_be_finished_or_released(store: IdempotencyStore) -> None:
    """After resume the owner may finish the record, or release it when nothing was sent."""
    await claim(store)
    await park(store)
    await store.resume(
        KEY, owner=ME, token=await held(store, KEY), lease_until=T0 + timedelta(seconds=300), now=T0
    )
    await store.release(KEY, owner=ME, token=await held(store, KEY), now=T0)
    released = await store.get(KEY)
    assert released is not None
    assert released.state is State.RELEASED
    await claim(store, now=T0 + timedelta(seconds=5))
    await park(store, now=T0 + timedelta(seconds=6))
    await store.resume(
        KEY, owner=ME, token=await held(store, KEY), lease_until=T0 + timedelta(seconds=300), now=T0
    )
    await finish(store)
    record = await store.get(KEY)
    assert record is not None
    assert record.state is State.COMPLETED


async def test_release_keeps_a_parked_record(store: IdempotencyStore) -> None:
    """release never deletes a RECONCILING record: its request may have been applied."""
    await claim(store)
    await park(store)
    before = await store.get(KEY)
    await store.release(KEY, owner=ME, token=await held(store, KEY), now=T0)
    assert await store.get(KEY) == before


async def test_a_parked_record_can_be_finished_by_its_owner(store: IdempotencyStore) -> None:
    """finish by the owner of a RECONCILING record stores the terminal state."""
    await claim(store)
    await park(store)
    await finish(store, state=State.UNKNOWN)
    record = await store.get(KEY)
    assert record is not None
    assert record.state is State.UNKNOWN
    duplicate = await claim(store, owner=OTHER, now=T0 + timedelta(hours=1))
    assert duplicate.status is ClaimStatus.DUPLICATE


# -- ownership -------------------------------------------------------------------------------


async def test_finish_by_a_non_owner_raises_ownership_lost(store: IdempotencyStore) -> None:
    """finish by a worker that does not own the record raises OwnershipLostError."""
    await claim(store)
    with pytest.raises(OwnershipLostError):
        await finish(store, owner=OTHER)


async def test_park_by_a_non_owner_raises_and_changes_nothing(store: IdempotencyStore) -> None:
    """park by a worker that does not own the claim raises OwnershipLostError."""
    await claim(store)
    before = await store.get(KEY)
    with pytest.raises(OwnershipLostError):
        await park(store, owner=OTHER)
    assert await store.get(KEY) == before


async def test_resume_by_a_non_owner_raises_and_changes_nothing(store: IdempotencyStore) -> None:
    """resume by a worker that does not own the parked record raises OwnershipLostError."""
    await claim(store)
    await park(store)
    before = await store.get(KEY)
    with pytest.raises(OwnershipLostError):
        await store.resume(
            KEY,
            owner=OTHER,
            token=await held(store, KEY),
            lease_until=T0 + timedelta(seconds=500),
            now=T0,
        )
    assert await store.get(KEY) == before


async def test_the_previous_owner_of_a_parked_record_cannot_touch_it(
    store: IdempotencyStore,
) -> None:
    """Once another owner took a lapsed RECONCILING record, the old owner's writes raise."""
    await claim(store)
    await park(store, lease_until=T0 + timedelta(seconds=90))
    await claim(store, owner=OTHER, now=T0 + timedelta(seconds=91))
    later = T0 + timedelta(seconds=92)
    with pytest.raises(OwnershipLostError):
        await store.resume(
            KEY,
            owner=ME,
            token=await held(store, KEY),
            lease_until=later + timedelta(seconds=60),
            now=later,
        )
    with pytest.raises(OwnershipLostError):
        await park(store, owner=ME, now=later)
    with pytest.raises(OwnershipLostError):
        await finish(store, owner=ME, now=later)
    record = await store.get(KEY)
    assert record is not None
    assert (record.owner, record.state) == (OTHER, State.RECONCILING)


@pytest.mark.parametrize("operation", ["finish", "park", "resume"])
async def test_writes_to_an_unknown_key_raise_ownership_lost(
    store: IdempotencyStore, operation: str
) -> None:
    """finish, park and resume of a key with no record raise OwnershipLostError, create nothing."""
    writes = {
        "finish": lambda: finish(store),
        "park": lambda: park(store),
        "resume": lambda: store.resume(
            KEY, owner=ME, token=1, lease_until=T0 + timedelta(seconds=60), now=T0
        ),
    }
    with pytest.raises(OwnershipLostError):
        await writes[operation]()
    assert await store.get(KEY) is None


def test_ownership_lost_is_a_runtime_error() -> None:
    """OwnershipLostError is a RuntimeError, so older callers catching that still do."""
    assert issubclass(OwnershipLostError, RuntimeError)


# -- prune -----------------------------------------------------------------------------------


async def stored_in(
    store: IdempotencyStore, key: str, state: State | None, *, at: datetime
) -> None:
    """A record of ``key`` last changed at ``at``: IN_FLIGHT, RECONCILING or finished."""
    await store.claim(key, FP, owner=ME, now=at, lease_s=LEASE_S)
    if state is State.RECONCILING:
        await store.park(
            key,
            owner=ME,
            token=1,
            now=at,
            settle_until=at,
            lease_until=at + timedelta(seconds=LEASE_S),
        )
    elif state is not None and state is not State.IN_FLIGHT:
        await store.finish(
            key,
            owner=ME,
            token=1,
            state=state,
            outcome=OUTCOME,
            attempts=1,
            now=at,
        )


async def test_prune_deletes_only_old_terminal_records(backend: Backend) -> None:
    """prune deletes terminal records changed before the cut-off, keeps the rest, and counts."""
    old = T0 - timedelta(days=40)
    cutoff = T0 - timedelta(days=30)
    await stored_in(backend.store, "old-completed", State.COMPLETED, at=old)
    await stored_in(backend.store, "old-failed", State.FAILED, at=old)
    await stored_in(backend.store, "old-unknown", State.UNKNOWN, at=old)
    await stored_in(backend.store, "old-in-flight", State.IN_FLIGHT, at=old)
    await stored_in(backend.store, "old-reconciling", State.RECONCILING, at=old)
    await stored_in(backend.store, "new-completed", State.COMPLETED, at=T0)
    await stored_in(backend.store, "at-cutoff", State.FAILED, at=cutoff)
    assert await backend.store.prune(older_than=cutoff) == 3
    reopened = await backend.reopen()
    for gone in ("old-completed", "old-failed", "old-unknown"):
        assert await reopened.get(gone) is None, gone
    for kept in ("old-in-flight", "old-reconciling", "new-completed", "at-cutoff"):
        assert await reopened.get(kept) is not None, kept
    assert await reopened.prune(older_than=cutoff) == 0


async def test_prune_goes_by_the_last_change_not_the_creation(store: IdempotencyStore) -> None:
    """A record created long ago but finished recently is kept."""
    await store.claim(KEY, FP, owner=ME, now=T0 - timedelta(days=40), lease_s=LEASE_S)
    await finish(store, now=T0)
    assert await store.prune(older_than=T0 - timedelta(days=30)) == 0
    assert await store.get(KEY) is not None


async def test_prune_of_an_empty_store_is_zero(store: IdempotencyStore) -> None:
    """prune with nothing stored returns 0."""
    assert await store.prune(older_than=T0) == 0


async def test_a_pruned_key_can_be_claimed_afresh(store: IdempotencyStore) -> None:
    """After its record was pruned, a key is new again: CLAIMED."""
    await stored_in(store, KEY, State.COMPLETED, at=T0 - timedelta(days=40))
    assert await store.prune(older_than=T0) == 1
    again = await claim(store, fingerprint=OTHER_FP, owner=OTHER, now=T0)
    assert again.status is ClaimStatus.CLAIMED


# -- SQLite files written by the previous version ------------------------------------------------

PREVIOUS_SCHEMA = """
CREATE TABLE idempotency (
    key          TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    state        TEXT NOT NULL,
    owner        TEXT NOT NULL,
    lease_until  REAL NOT NULL,
    attempts     INTEGER NOT NULL,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    outcome_kind TEXT,
    outcome      TEXT,
    published    INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
"""


async def test_a_database_of_the_previous_schema_still_works(tmp_path: Path) -> None:
    """A SQLite file created before settle_until existed opens, keeps its records and parks."""
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(PREVIOUS_SCHEMA)
    old.execute(
        "INSERT INTO idempotency VALUES (?, ?, 'COMPLETED', ?, ?, 1, ?, ?, 'completed', ?, 1)",
        (KEY, FP, OTHER, T0.timestamp(), T0.timestamp(), T0.timestamp(), EARLIER_COMPLETED),
    )
    old.commit()
    old.close()
    store = await SqliteStore.open(path)
    try:
        duplicate = await claim(store, now=T0 + timedelta(hours=1))
        assert duplicate.status is ClaimStatus.DUPLICATE
        assert duplicate.record.outcome == EARLIER_COMPLETED_OUTCOME
        assert duplicate.record.settle_until is None
        fresh = await claim(store, key="new-key", now=T0)
        assert fresh.status is ClaimStatus.CLAIMED
        await park(store, key="new-key")
        parked = await store.get("new-key")
        assert parked is not None
        assert parked.settle_until == T0 + timedelta(seconds=30)
    finally:
        await store.close()


# -- outcomes as SQLite keeps them ---------------------------------------------------------------

# Outcomes exactly as version 0.4.0 wrote them into the ``outcome`` column.
EARLIER_COMPLETED = (
    '{"event_id": "1e19d27d-f2fa-5fc1-a74d-12fa53799622", "idempotency_key": "case-1234-credit",'
    ' "correlation_id": "corr-1", "requested_by": "crm",'
    ' "account_ref": "acct-0123456789abcdef0123456789abcdef",'
    ' "account_masked": "***************5000", "command_occurred_at": 1741064400000,'
    ' "received_at": 1741064767123, "source": {"topic": "points-adjustments.requested.v1",'
    ' "partition": 3, "offset": 101}, "duplicate": false,'
    ' "metadata": {"case": "1234", "pan": "************1111"}, "service_version": "0.4.0",'
    ' "adjustment_type_code": "GOODWILL", "points_requested": 250, "points_adjusted": 250,'
    ' "attempts": 1, "completed_at": 1741064767145, "pas_duration_ms": 22,'
    ' "pas_correlation_id": "mc-1"}'
)
EARLIER_FAILED = (
    '{"event_id": "1e19d27d-f2fa-5fc1-a74d-12fa53799622", "idempotency_key": "case-1234-credit",'
    ' "correlation_id": "corr-1", "requested_by": "crm",'
    ' "account_ref": "acct-0123456789abcdef0123456789abcdef",'
    ' "account_masked": "***************5000", "command_occurred_at": 1741064400000,'
    ' "received_at": 1741064767123, "source": {"topic": "points-adjustments.requested.v1",'
    ' "partition": 3, "offset": 101}, "duplicate": false,'
    ' "metadata": {"case": "1234", "pan": "************1111"}, "service_version": "0.4.0",'
    ' "reason_code": "PAS_REJECTED",'
    ' "description": "PAS did not apply the adjustment: HTTP 400 INVALID_POINTS",'
    ' "retryable": false, "errors": [{"source": "rewards-points-api",'
    ' "reason_code": "INVALID_POINTS", "description": "bad points", "recoverable": false,'
    ' "field": "pointsToAdjust"}, {"source": "Gateway", "reason_code": "DECLINED",'
    ' "description": "x", "recoverable": true, "field": null}], "http_status": 400,'
    ' "attempts": 1, "failed_at": 1741064768000}'
)
EARLIER_INFO = CommandInfo(
    idempotency_key=KEY,
    correlation_id="corr-1",
    requested_by="crm",
    account_ref="acct-0123456789abcdef0123456789abcdef",
    account_masked="***************5000",
    command_occurred_at=datetime(2025, 3, 4, 5, 0, 0, tzinfo=UTC),
    received_at=datetime(2025, 3, 4, 5, 6, 7, 123_000, tzinfo=UTC),
    source=SourceRef("points-adjustments.requested.v1", 3, 101),
    metadata={"case": "1234", "pan": "************1111"},
)
EARLIER_COMPLETED_OUTCOME = Completed(
    info=EARLIER_INFO,
    adjustment_type_code="GOODWILL",
    points_requested=250,
    points_adjusted=250,
    attempts=1,
    completed_at=datetime(2025, 3, 4, 5, 6, 7, 145_000, tzinfo=UTC),
    pas_duration_ms=22,
    pas_correlation_id="mc-1",
    service_version="0.4.0",
)
EARLIER_FAILED_OUTCOME = Failed(
    info=EARLIER_INFO,
    reason_code="PAS_REJECTED",
    description="PAS did not apply the adjustment: HTTP 400 INVALID_POINTS",
    retryable=False,
    failed_at=datetime(2025, 3, 4, 5, 6, 8, tzinfo=UTC),
    errors=(
        ErrorDetail("rewards-points-api", "INVALID_POINTS", "bad points", False, "pointsToAdjust"),
        ErrorDetail("Gateway", "DECLINED", "x", True, None),
    ),
    http_status=400,
    attempts=1,
    service_version="0.4.0",
)
EARLIER = [
    ("completed", EARLIER_COMPLETED, EARLIER_COMPLETED_OUTCOME),
    ("failed", EARLIER_FAILED, EARLIER_FAILED_OUTCOME),
]


def outcome_column(path: Path, key: str = KEY) -> tuple[str, str]:
    """``(outcome_kind, outcome)`` of ``key`` as the file holds them."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        row = db.execute(
            "SELECT outcome_kind, outcome FROM idempotency WHERE key = ?", (key,)
        ).fetchone()
    return str(row[0]), str(row[1])


@pytest.mark.parametrize(("kind", "text", "outcome"), EARLIER, ids=["completed", "failed"])
async def test_an_outcome_written_by_an_earlier_version_reads_back_and_is_written_alike(
    tmp_path: Path, kind: str, text: str, outcome: Completed | Failed
) -> None:
    """An outcome stored by version 0.4.0 reads back as the outcome it was, and this version
    stores that outcome as exactly the same JSON: a store survives an upgrade either way."""
    path = tmp_path / "idempotency.sqlite3"
    store = await SqliteStore.open(path)
    try:
        await claim(store)
        await store.finish(
            KEY, owner=ME, token=1, state=State.COMPLETED, outcome=outcome, attempts=1, now=T0
        )
        assert outcome_column(path) == (kind, text)
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute("UPDATE idempotency SET outcome = ? WHERE key = ?", (text, KEY))
        duplicate = await claim(store, owner=OTHER, now=T0 + timedelta(hours=1))
        assert duplicate.status is ClaimStatus.DUPLICATE
        assert duplicate.record.outcome == outcome
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("completed", "not json"),
        ("completed", '{"event_id": "e-1"}'),
        ("completed", EARLIER_FAILED),
        ("failed", '["a list"]'),
        ("failed", EARLIER_FAILED.replace('"errors": [', '"errors": [5, ')),
        ("refunded", EARLIER_COMPLETED),
    ],
    ids=["not-json", "missing-fields", "wrong-kind", "a-list", "bad-error", "unknown-kind"],
)
async def test_an_outcome_that_cannot_be_read_back_is_a_store_error(
    tmp_path: Path, kind: str, text: str
) -> None:
    """A damaged stored outcome fails the call that reads it with a StoreError (naming the
    store, quoting nothing of the row), never with another exception; other keys work on."""
    path = tmp_path / "idempotency.sqlite3"
    store = await SqliteStore.open(path)
    try:
        await claim(store)
        await finish(store)
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute(
                "UPDATE idempotency SET outcome_kind = ?, outcome = ? WHERE key = ?",
                (kind, text, KEY),
            )
        for call in (lambda: store.get(KEY), lambda: claim(store, owner=OTHER)):
            with pytest.raises(StoreError) as caught:
                await call()
            assert type(caught.value) is StoreError
            assert str(path.absolute()) in str(caught.value)
            assert "corr-1" not in str(caught.value)
            assert "acct-" not in str(caught.value)
        assert (await claim(store, key="other-key")).status is ClaimStatus.CLAIMED
    finally:
        await store.close()


# -- SQLite group commit -------------------------------------------------------------------------


def rows_in(path: Path) -> set[str]:
    """The keys stored in the file, read through a connection of its own."""
    reader = sqlite3.connect(path)
    try:
        return {row[0] for row in reader.execute("SELECT key FROM idempotency")}
    finally:
        reader.close()


def hold_the_write_lock(path: Path) -> sqlite3.Connection:
    """A second connection holding the write lock: the store's writer waits (busy_timeout),
    so the calls made meanwhile queue up and go into the next batch."""
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    return blocker


def let_go(blocker: sqlite3.Connection) -> None:
    blocker.execute("ROLLBACK")
    blocker.close()


def loop_errors() -> list[dict[str, Any]]:
    """Collects what reaches the running loop's exception handler (e.g. InvalidStateError)."""
    seen: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: seen.append(context))
    return seen


async def test_concurrent_claims_are_group_committed_and_persisted(tmp_path: Path) -> None:
    """200 concurrent claims all succeed, reach the file, and take far fewer transactions."""
    path = tmp_path / "gc.sqlite3"
    store = await SqliteStore.open(path)
    keys = [f"k-{i}" for i in range(200)]
    try:
        before = store.transactions
        results = await asyncio.gather(
            *(store.claim(key, FP, owner=ME, now=T0, lease_s=LEASE_S) for key in keys)
        )
        committed = store.transactions - before
    finally:
        await store.close()
    assert [result.status for result in results] == [ClaimStatus.CLAIMED] * 200
    assert [result.record.key for result in results] == keys
    assert 1 <= committed <= 200 // 4
    assert rows_in(path) == set(keys)
    reopened = await SqliteStore.open(path)
    try:
        stored = await reopened.get("k-199")
        assert stored is not None
        assert (stored.state, stored.owner) == (State.IN_FLIGHT, ME)
    finally:
        await reopened.close()


async def test_a_call_losing_ownership_in_a_batch_fails_alone(tmp_path: Path) -> None:
    """A finish by a non-owner batched among claims raises OwnershipLostError; the claims
    around it in the same transaction are committed, and the record it aimed at is intact."""
    path = tmp_path / "gc.sqlite3"
    store = await SqliteStore.open(path)
    try:
        await claim(store, owner=OTHER)
        before_record = await store.get(KEY)
        before = store.transactions
        blocker = hold_the_write_lock(path)
        try:
            calls = [claim(store, key=f"k-{i}") for i in range(5)]
            calls.append(finish(store, owner=ME))  # KEY is owned by OTHER
            calls += [claim(store, key=f"k-{i}") for i in range(5, 10)]
            gathered = asyncio.gather(*calls, return_exceptions=True)
            await asyncio.sleep(0.1)  # every call is queued; the writer waits for the lock
        finally:
            let_go(blocker)
        results = await gathered
        assert store.transactions - before <= 2  # the bad finish shared a batch with claims
        assert isinstance(results[5], OwnershipLostError)
        claims = [r for r in results[:5] + results[6:] if not isinstance(r, BaseException)]
        assert [result.status for result in claims] == [ClaimStatus.CLAIMED] * 10
        assert await store.get(KEY) == before_record
    finally:
        await store.close()
    assert rows_in(path) == {KEY} | {f"k-{i}" for i in range(10)}


async def test_a_call_that_raises_after_writing_is_undone_alone(tmp_path: Path) -> None:
    """A call that wrote and then raised is rolled back to its savepoint; its batch commits."""
    path = tmp_path / "gc.sqlite3"
    store = await SqliteStore.open(path)

    def write_then_fail() -> None:
        # runs on the writer thread, inside the batch; undone by its savepoint
        store._db.execute("DELETE FROM idempotency WHERE key = ?", ("k-0",))
        raise OwnershipLostError("after a write")

    try:
        await claim(store, key="k-0")
        blocker = hold_the_write_lock(path)
        try:
            first = asyncio.ensure_future(claim(store, key="k-1"))
            failing = store._run(write_then_fail)
            last = asyncio.ensure_future(claim(store, key="k-2"))
            await asyncio.sleep(0.1)
        finally:
            let_go(blocker)
        with pytest.raises(OwnershipLostError):
            await failing
        assert (await first).status is ClaimStatus.CLAIMED
        assert (await last).status is ClaimStatus.CLAIMED
    finally:
        await store.close()
    assert rows_in(path) == {"k-0", "k-1", "k-2"}


async def test_a_cancelled_caller_does_not_break_its_batch(tmp_path: Path) -> None:
    """Cancelling callers (one in the running batch, one still queued) fails only them."""
    errors = loop_errors()
    path = tmp_path / "gc.sqlite3"
    store = await SqliteStore.open(path)
    try:
        blocker = hold_the_write_lock(path)
        try:
            tasks = [asyncio.create_task(claim(store, key=f"k-{i}")) for i in range(10)]
            await asyncio.sleep(0.1)  # k-0 is in the batch waiting for the lock
            tasks[0].cancel()
            tasks[9].cancel()
        finally:
            let_go(blocker)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert isinstance(results[9], asyncio.CancelledError)
        claims = [r for r in results[1:9] if not isinstance(r, BaseException)]
        assert [result.status for result in claims] == [ClaimStatus.CLAIMED] * 8
        after = await claim(store, key="k-after")
        assert after.status is ClaimStatus.CLAIMED
    finally:
        await store.close()
    assert {f"k-{i}" for i in range(1, 9)} | {"k-after"} <= rows_in(path)
    assert errors == []


async def test_close_completes_the_calls_in_flight_then_refuses_more(tmp_path: Path) -> None:
    """close() commits what is queued, stops the writer thread; later calls raise."""
    path = tmp_path / "gc.sqlite3"
    store = await SqliteStore.open(path)
    tasks = [asyncio.create_task(claim(store, key=f"k-{i}")) for i in range(20)]
    await asyncio.sleep(0)  # the calls are queued
    await store.close()
    assert all(task.done() for task in tasks)
    assert [task.result().status for task in tasks] == [ClaimStatus.CLAIMED] * 20
    assert not [t for t in threading.enumerate() if t.name == "idempotency-sqlite"]
    assert rows_in(path) == {f"k-{i}" for i in range(20)}
    with pytest.raises(RuntimeError, match="closed"):
        await store.get("k-0")
    with pytest.raises(RuntimeError, match="closed"):
        await claim(store, key="k-new")
    await store.close()  # a second close is harmless


async def test_an_unusable_path_is_a_startup_error_naming_the_setting(tmp_path: Path) -> None:
    """A database path under a regular file cannot be opened: StartupError with the setting."""
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StartupError) as caught:
        await SqliteStore.open(tmp_path / "file" / "idempotency.sqlite3")
    assert caught.value.setting == "PA_IDEMPOTENCY__SQLITE_PATH"
    assert not [t for t in threading.enumerate() if t.name == "idempotency-sqlite"]


# -- identity ------------------------------------------------------------------------------------


async def test_a_new_sqlite_store_is_created_with_an_identity_kept_across_opens(
    tmp_path: Path,
) -> None:
    """A new file is ``created`` with a UUID identity; reopened it keeps that identity."""
    path = tmp_path / "db" / "idempotency.sqlite3"
    first = await SqliteStore.open(path)
    try:
        assert first.created is True
        identity = first.identity
        assert len(identity) == 36
        await claim(first)
    finally:
        await first.close()
    again = await SqliteStore.open(path)
    try:
        assert again.identity == identity
        assert again.created is False
    finally:
        await again.close()


async def test_an_empty_store_stays_new_until_adopted(tmp_path: Path) -> None:
    """Reopening a store that holds nothing and was never adopted finds it new again (so a
    refused start stays refused); after adopt() it is not new, with the same identity."""
    path = tmp_path / "idempotency.sqlite3"
    first = await SqliteStore.open(path)
    identity = first.identity
    await first.close()
    second = await SqliteStore.open(path)
    try:
        assert (second.created, second.identity) == (True, identity)
        await second.adopt()
        await second.adopt()  # a second adopt changes nothing
        assert second.created is True  # it was new when this instance opened it
    finally:
        await second.close()
    third = await SqliteStore.open(path)
    try:
        assert (third.created, third.identity) == (False, identity)
    finally:
        await third.close()


@pytest.mark.parametrize("with_records", [True, False])
async def test_a_database_from_before_identities_gets_one(
    tmp_path: Path, with_records: bool
) -> None:
    """A file of the previous schema gets an identity on its first open, kept afterwards; it
    is not new when it holds records, and new when it holds none."""
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(PREVIOUS_SCHEMA)
    if with_records:
        old.execute(
            "INSERT INTO idempotency VALUES (?, ?, 'COMPLETED', ?, ?, 1, ?, ?, 'completed', ?, 1)",
            (KEY, FP, OTHER, T0.timestamp(), T0.timestamp(), T0.timestamp(), "{}"),
        )
    old.commit()
    old.close()
    first = await SqliteStore.open(path)
    identity = first.identity
    assert first.created is not with_records
    await first.close()
    again = await SqliteStore.open(path)
    try:
        assert again.identity == identity
        assert again.created is not with_records
    finally:
        await again.close()


async def test_two_stores_have_different_identities(tmp_path: Path) -> None:
    """Two files created apart have different identities; so do two memory stores."""
    one = await SqliteStore.open(tmp_path / "one.sqlite3")
    two = await SqliteStore.open(tmp_path / "two.sqlite3")
    try:
        assert one.identity != two.identity
    finally:
        await one.close()
        await two.close()
    assert MemoryStore().identity != MemoryStore().identity


async def test_a_memory_store_is_always_new_and_never_lost() -> None:
    """A memory store is created with a fresh identity, has no problem, and probes fine."""
    memory = MemoryStore()
    assert memory.created is True
    assert memory.problem is None
    await memory.probe()
    await memory.adopt()
    assert memory.created is True


# -- a lost store --------------------------------------------------------------------------------


async def test_a_deleted_file_makes_the_next_call_fail_and_nothing_is_recreated(
    tmp_path: Path,
) -> None:
    """Once the file is deleted under an open store, the next claim raises StoreLostError
    (not retriable), ``problem`` says so, every later call fails, and no file reappears."""
    path = tmp_path / "idempotency.sqlite3"
    store = await SqliteStore.open(path)
    try:
        await claim(store, key="before")
        assert store.problem is None
        path.unlink()
        with pytest.raises(StoreLostError) as caught:
            await claim(store, key="after")
        assert caught.value.retriable is False
        assert caught.value.store == str(path)
        assert str(path) in str(caught.value)
        assert "after" not in str(caught.value).replace(str(path), "")
        assert store.problem is not None
        assert "deleted" in store.problem
        with pytest.raises(StoreLostError):
            await store.get("before")
        with pytest.raises(StoreLostError):
            await finish(store)
        with pytest.raises(StoreLostError):
            await store.probe()
        assert not path.exists()
    finally:
        await store.close()
    assert not path.exists()


async def test_calls_queued_when_the_file_went_all_fail(tmp_path: Path) -> None:
    """Calls already queued when the loss is found fail together; none of them is written."""
    path = tmp_path / "idempotency.sqlite3"
    store = await SqliteStore.open(path)
    try:
        await claim(store, key="before")
        path.unlink()
        results = await asyncio.gather(
            *(claim(store, key=f"k-{i}") for i in range(20)), return_exceptions=True
        )
        assert all(isinstance(result, StoreLostError) for result in results)
        assert len({id(result) for result in results}) == 20  # one error per caller
    finally:
        await store.close()
    assert not path.exists()


async def test_a_file_replaced_by_another_database_is_lost(tmp_path: Path) -> None:
    """A file replaced by another database (another inode at the path) makes the next call
    raise StoreLostError naming the replacement; the replacement is left as it was."""
    path = tmp_path / "idempotency.sqlite3"
    store = await SqliteStore.open(path)
    try:
        await claim(store, key="before")
        other_path = tmp_path / "other.sqlite3"
        other = sqlite3.connect(other_path)
        other.execute("CREATE TABLE other (x INTEGER)")
        other.execute("INSERT INTO other VALUES (42)")
        other.commit()
        other.close()
        os.replace(other_path, path)
        with pytest.raises(StoreLostError, match="replaced"):
            await claim(store, key="after")
        assert store.problem is not None
        assert "replaced" in store.problem
    finally:
        await store.close()
    replacement = sqlite3.connect(path)
    try:
        tables = {row[0] for row in replacement.execute("SELECT name FROM sqlite_master")}
        assert tables == {"other"}
        assert replacement.execute("SELECT x FROM other").fetchall() == [(42,)]
    finally:
        replacement.close()


async def test_after_a_noticed_deletion_the_next_open_is_a_new_store(tmp_path: Path) -> None:
    """The WAL a lost store leaves at the path is emptied, so a restart finds a new store
    (which the continuity check then refuses) rather than the lost one's last pages."""
    path = tmp_path / "idempotency.sqlite3"
    store = await SqliteStore.open(path)
    identity = store.identity
    try:
        for i in range(20):
            await claim(store, key=f"k-{i}")
        path.unlink()
        with pytest.raises(StoreLostError):
            await claim(store, key="after")
    finally:
        await store.close()
    wal = tmp_path / "idempotency.sqlite3-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    again = await SqliteStore.open(path)
    try:
        assert again.created is True
        assert again.identity != identity
        assert await again.get("k-0") is None
    finally:
        await again.close()


async def test_a_wal_left_without_its_database_is_refused_at_open(tmp_path: Path) -> None:
    """A path whose database is gone while a non-empty WAL of it remains (the service was
    stopped before it noticed the deletion) is a StartupError naming the setting, and no
    database is created there."""
    path = tmp_path / "idempotency.sqlite3"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE t (x INTEGER)")
    writer.execute("INSERT INTO t VALUES (1)")
    path.unlink()
    writer.close()  # SQLite leaves the WAL of an unlinked database where it was
    wal = tmp_path / "idempotency.sqlite3-wal"
    assert wal.stat().st_size > 0
    with pytest.raises(StartupError, match="remains but the database itself is gone") as caught:
        await SqliteStore.open(path)
    assert caught.value.setting == "PA_IDEMPOTENCY__SQLITE_PATH"
    assert not path.exists()


async def test_probe_notices_a_deletion_while_idle(tmp_path: Path) -> None:
    """probe() passes on a healthy store and raises StoreLostError once the file is gone,
    with no claim arriving; ``problem`` is set from then on."""
    path = tmp_path / "idempotency.sqlite3"
    store = await SqliteStore.open(path)
    try:
        await store.probe()
        before = store.transactions
        await store.probe()
        assert store.transactions == before  # a probe runs no transaction
        path.unlink()
        with pytest.raises(StoreLostError):
            await store.probe()
        assert store.problem is not None
    finally:
        await store.close()
    assert not path.exists()


async def test_a_deleted_parent_directory_is_a_loss(tmp_path: Path) -> None:
    """A store whose whole directory was removed is lost, and the directory is not remade."""
    directory = tmp_path / "var"
    path = directory / "idempotency.sqlite3"
    store = await SqliteStore.open(path)
    try:
        for leftover in directory.iterdir():
            leftover.unlink()
        directory.rmdir()
        with pytest.raises(StoreLostError):
            await claim(store)
    finally:
        await store.close()
    assert not directory.exists()


# -- I/O failures ------------------------------------------------------------------------------


async def test_a_sqlite_io_failure_is_a_store_unavailable_error(tmp_path: Path) -> None:
    """An sqlite3.OperationalError in a call becomes StoreUnavailableError (retriable, the
    original chained, the file named, no key in it); the calls around it still commit."""
    path = tmp_path / "idempotency.sqlite3"
    store = await SqliteStore.open(path)

    def fail() -> None:
        raise sqlite3.OperationalError("database or disk is full")

    try:
        blocker = hold_the_write_lock(path)
        try:
            first = asyncio.ensure_future(claim(store, key="k-1"))
            failing = store._run(fail)
            await asyncio.sleep(0.1)
        finally:
            let_go(blocker)
        with pytest.raises(StoreUnavailableError) as caught:
            await failing
        assert (await first).status is ClaimStatus.CLAIMED
        assert caught.value.retriable is True
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        assert str(path) in str(caught.value)
        assert "disk is full" in str(caught.value)
        assert store.problem is None  # unavailable is not lost
        assert (await claim(store, key="k-2")).status is ClaimStatus.CLAIMED
    finally:
        await store.close()


def test_the_store_errors_form_one_tree() -> None:
    """Store errors are PointsAdjusterErrors; unavailable is retriable, lost is not, and
    OwnershipLostError stays outside the tree (it is not a fault of the store)."""
    assert issubclass(StoreError, PointsAdjusterError)
    assert issubclass(StoreUnavailableError, StoreError)
    assert issubclass(StoreLostError, StoreError)
    assert StoreUnavailableError("x", store="p").retriable is True
    assert StoreLostError("x", store="p").retriable is False
    assert not issubclass(OwnershipLostError, StoreError)


# -- continuity at start-up ------------------------------------------------------------------

WHERE = {"store": "var/idempotency.sqlite3", "identity": "id-1", "group": "g", "topic": "t"}


@pytest.mark.parametrize(
    ("created", "committed", "allow", "expected"),
    [
        (True, {0: 10, 2: 5}, False, "refused"),
        (True, {}, False, None),
        (False, {0: 10}, False, None),
        (False, {}, False, None),
        (True, {0: 10}, True, "warning"),
        (True, {}, True, None),
        (False, {0: 10}, True, None),
    ],
)
def test_the_continuity_rule(
    created: bool, committed: dict[int, int], allow: bool, expected: str | None
) -> None:
    """A new store next to committed offsets is refused, or only warned about with the
    override; a new store with no offsets, or an old store, is fine."""
    if expected == "refused":
        with pytest.raises(StartupError):
            check_continuity(created, committed, allow, **WHERE)
        return
    result = check_continuity(created, committed, allow, **WHERE)
    if expected is None:
        assert result is None
    else:
        assert result is not None
        assert "PA_IDEMPOTENCY__ALLOW_EMPTY_STORE=true" in result


def test_a_refusal_says_what_was_found_and_what_to_do() -> None:
    """The refusal names the store, its identity, the group, the topic, the partitions, the
    remedy and the path setting."""
    with pytest.raises(StartupError) as caught:
        check_continuity(True, {2: 5, 0: 10}, False, **WHERE)
    message = str(caught.value)
    assert caught.value.setting == "PA_IDEMPOTENCY__SQLITE_PATH"
    assert caught.value.component == "idempotency store"
    for part in (
        "the store at var/idempotency.sqlite3 is new (identity id-1)",
        "consumer group g has committed offsets on t (partitions 0, 2)",
        "re-read commands could be applied twice",
        "Restore the store, or set PA_IDEMPOTENCY__ALLOW_EMPTY_STORE=true",
    ):
        assert part in message


class OffsetsSeen:
    """A fake reader of committed offsets that counts its calls."""

    def __init__(self, offsets: dict[int, int]) -> None:
        self.offsets = offsets
        self.calls = 0

    async def __call__(self, settings: KafkaSettings) -> dict[int, int]:
        self.calls += 1
        return self.offsets


async def test_verify_refuses_a_new_store_and_leaves_it_new(tmp_path: Path) -> None:
    """verify_continuity refuses a new store next to committed offsets and does not adopt it,
    so the next start (a restart after the refusal) is refused too."""
    path = tmp_path / "idempotency.sqlite3"
    settings = IdempotencySettings(sqlite_path=path)
    for _ in range(2):
        store = await SqliteStore.open(path)
        try:
            assert store.created is True
            with pytest.raises(StartupError, match="is new"):
                await verify_continuity(
                    store, settings, KafkaSettings(), read_offsets=OffsetsSeen({0: 3})
                )
        finally:
            await store.close()


async def test_verify_with_the_override_warns_and_adopts(tmp_path: Path) -> None:
    """With allow_empty_store, a new store next to offsets starts with a warning and is
    adopted: the next start finds it not new and does not even ask the broker."""
    path = tmp_path / "idempotency.sqlite3"
    settings = IdempotencySettings(sqlite_path=path, allow_empty_store=True)
    store = await SqliteStore.open(path)
    try:
        warning = await verify_continuity(
            store, settings, KafkaSettings(), read_offsets=OffsetsSeen({1: 7})
        )
    finally:
        await store.close()
    assert warning is not None
    assert "partitions 1" in warning
    reader = OffsetsSeen({1: 7})
    store = await SqliteStore.open(path)
    try:
        assert store.created is False
        strict = IdempotencySettings(sqlite_path=path)
        assert await verify_continuity(store, strict, KafkaSettings(), read_offsets=reader) is None
    finally:
        await store.close()
    assert reader.calls == 0


async def test_verify_adopts_a_new_store_when_the_group_has_no_offsets(tmp_path: Path) -> None:
    """A first start (new store, group without offsets) passes and adopts the store."""
    path = tmp_path / "idempotency.sqlite3"
    store = await SqliteStore.open(path)
    try:
        result = await verify_continuity(
            store,
            IdempotencySettings(sqlite_path=path),
            KafkaSettings(),
            read_offsets=OffsetsSeen({}),
        )
        assert result is None
    finally:
        await store.close()
    store = await SqliteStore.open(path)
    try:
        assert store.created is False
    finally:
        await store.close()


async def test_verify_skips_the_memory_backend() -> None:
    """The memory backend is new on every start by design: not checked, the broker not asked."""
    reader = OffsetsSeen({0: 1})
    result = await verify_continuity(
        MemoryStore(), IdempotencySettings(backend="memory"), KafkaSettings(), read_offsets=reader
    )
    assert result is None
    assert reader.calls == 0
