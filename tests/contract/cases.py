"""What the store contract's tests share: the values they write, and small helpers.

``Backend`` is one store under test and a way to open the same data again (a new process
would); the ``backend`` fixture (tests/contract/conftest.py) makes one per kind of store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from service.domain.outcome import CommandInfo, ErrorDetail, Failed, SourceRef
from service.domain.store import IdempotencyStore, State

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
