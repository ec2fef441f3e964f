"""An in-memory idempotency store: for unit tests and throw-away runs (lost on exit)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta

from service.domain.outcome import Outcome
from service.domain.store import (
    PRUNABLE,
    Claim,
    ClaimStatus,
    IdempotencyRecord,
    OwnershipLostError,
    State,
    decide_claim,
    next_token,
)


class MemoryStore:
    """Implements ``IdempotencyStore`` in a dict."""

    def __init__(self) -> None:
        self.records: dict[str, IdempotencyRecord] = {}
        self._identity = str(uuid.uuid4())

    @property
    def identity(self) -> str:
        """A fresh UUID per instance: nothing outlives it."""
        return self._identity

    @property
    def created(self) -> bool:
        """Always True: every instance starts empty."""
        return True

    @property
    def problem(self) -> str | None:
        """Always None: a dict cannot be lost under the process."""
        return None

    async def probe(self) -> None:
        return None

    async def adopt(self) -> None:
        return None

    async def claim(
        self, key: str, fingerprint: str, *, owner: str, now: datetime, lease_s: float
    ) -> Claim:
        existing = self.records.get(key)
        status = decide_claim(existing, fingerprint, owner, now)
        lease_until = now + timedelta(seconds=lease_s)
        token = next_token(existing)
        if status is ClaimStatus.CLAIMED:
            record = IdempotencyRecord(
                key,
                fingerprint,
                State.IN_FLIGHT,
                owner,
                lease_until,
                0,
                existing.created_at if existing else now,
                now,
                token=token,
            )
            self.records[key] = record
            return Claim(status, record)
        assert existing is not None
        if status is ClaimStatus.TAKEN_OVER or status is ClaimStatus.RECONCILE:
            existing = replace(
                existing, owner=owner, lease_until=lease_until, updated_at=now, token=token
            )
            self.records[key] = existing
        return Claim(status, existing)

    def _owned(self, key: str, owner: str, token: int) -> IdempotencyRecord:
        record = self.records.get(key)
        if record is None or record.owner != owner or record.token != token:
            raise OwnershipLostError(f"idempotency key is not held by {owner} under {token}")
        return record

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
        record = self._owned(key, owner, token)
        self.records[key] = replace(
            record,
            state=state,
            outcome=outcome,  # immutable: kept as it is, no copy
            attempts=attempts,
            updated_at=now,
        )

    async def release(self, key: str, *, owner: str, token: int, now: datetime) -> None:
        record = self.records.get(key)
        if (
            record is not None
            and record.owner == owner
            and record.token == token
            and record.state is State.IN_FLIGHT
        ):
            self.records[key] = replace(record, state=State.RELEASED, updated_at=now)

    async def park(
        self,
        key: str,
        *,
        owner: str,
        token: int,
        now: datetime,
        settle_until: datetime,
        lease_until: datetime,
    ) -> None:
        record = self._owned(key, owner, token)
        self.records[key] = replace(
            record,
            state=State.RECONCILING,
            lease_until=lease_until,
            settle_until=settle_until,
            updated_at=now,
        )

    async def resume(
        self, key: str, *, owner: str, token: int, lease_until: datetime, now: datetime
    ) -> None:
        record = self._owned(key, owner, token)
        self.records[key] = replace(
            record, state=State.IN_FLIGHT, lease_until=lease_until, updated_at=now
        )

    async def prune(self, *, older_than: datetime) -> int:
        old = [
            key
            for key, record in self.records.items()
            if record.state in PRUNABLE and record.updated_at < older_than
        ]
        for key in old:
            del self.records[key]
        return len(old)

    async def mark_published(self, key: str) -> None:
        record = self.records.get(key)
        if record is not None:
            self.records[key] = replace(record, published=True)

    async def get(self, key: str) -> IdempotencyRecord | None:
        return self.records.get(key)

    async def close(self) -> None:
        return None
