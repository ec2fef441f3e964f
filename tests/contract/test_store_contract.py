"""The idempotency store contract, run against every kind of store: memory, SQLite,
PostgreSQL and Redis (the ``backend`` fixture of tests/contract/conftest.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service.domain.store import ClaimStatus, IdempotencyStore, OwnershipLostError, State
from tests.contract.cases import (
    FP,
    KEY,
    LEASE_S,
    ME,
    OTHER,
    OTHER_FP,
    OUTCOME,
    T0,
    Backend,
    claim,
    finish,
    held,
    park,
    stored_in,
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
