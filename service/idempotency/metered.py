"""An idempotency store that times every call of the store it wraps and counts its failures.

``MeteredStore`` implements ``IdempotencyStore`` by delegating each call to another store;
the duration of each operation (claim, finish, release, park, resume, mark_published, prune,
get, probe) goes to ``points_adjuster_store_operation_duration_seconds{operation}`` and a
call that raises to ``points_adjuster_store_errors_total{operation}``. Only the operation
names a label: never a key, an owner or a path. An ``OwnershipLostError`` is timed but not
counted as an error: another worker took the record over, which says nothing about the
store's health. ``close`` and ``adopt`` (once per process) are passed on unmeasured.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from service.domain.outcome import Outcome
from service.domain.store import (
    Claim,
    IdempotencyRecord,
    IdempotencyStore,
    OwnershipLostError,
    State,
)
from service.metrics import Metrics

T = TypeVar("T")

OPERATIONS = (
    "claim",
    "finish",
    "release",
    "park",
    "resume",
    "mark_published",
    "prune",
    "get",
    "probe",
)


class MeteredStore:
    """``inner`` with each call timed and each failure counted, by operation."""

    def __init__(
        self,
        inner: IdempotencyStore,
        metrics: Metrics,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._inner = inner
        self._metrics = metrics
        self._clock = clock
        for operation in OPERATIONS:  # every series exists from the start, at zero
            metrics.store_errors.labels(operation)
            metrics.store_latency.labels(operation)

    @property
    def inner(self) -> IdempotencyStore:
        return self._inner

    async def _call(self, operation: str, call: Awaitable[T]) -> T:
        started = self._clock()
        try:
            return await call
        except OwnershipLostError:
            raise
        except Exception:
            self._metrics.store_errors_for(operation).inc()
            raise
        finally:
            self._metrics.store_latency_for(operation).observe(self._clock() - started)

    async def claim(
        self, key: str, fingerprint: str, *, owner: str, now: datetime, lease_s: float
    ) -> Claim:
        return await self._call(
            "claim", self._inner.claim(key, fingerprint, owner=owner, now=now, lease_s=lease_s)
        )

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
        await self._call(
            "finish",
            self._inner.finish(
                key,
                owner=owner,
                token=token,
                state=state,
                outcome=outcome,
                attempts=attempts,
                now=now,
            ),
        )

    async def release(self, key: str, *, owner: str, token: int, now: datetime) -> None:
        await self._call("release", self._inner.release(key, owner=owner, token=token, now=now))

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
        await self._call(
            "park",
            self._inner.park(
                key,
                owner=owner,
                token=token,
                now=now,
                settle_until=settle_until,
                lease_until=lease_until,
            ),
        )

    async def resume(
        self, key: str, *, owner: str, token: int, lease_until: datetime, now: datetime
    ) -> None:
        await self._call(
            "resume",
            self._inner.resume(key, owner=owner, token=token, lease_until=lease_until, now=now),
        )

    async def prune(self, *, older_than: datetime) -> int:
        return await self._call("prune", self._inner.prune(older_than=older_than))

    async def mark_published(self, key: str) -> None:
        await self._call("mark_published", self._inner.mark_published(key))

    async def get(self, key: str) -> IdempotencyRecord | None:
        return await self._call("get", self._inner.get(key))

    async def probe(self) -> None:
        await self._call("probe", self._inner.probe())

    async def close(self) -> None:
        await self._inner.close()

    async def adopt(self) -> None:
        await self._inner.adopt()

    @property
    def identity(self) -> str:
        return self._inner.identity

    @property
    def created(self) -> bool:
        return self._inner.created

    @property
    def problem(self) -> str | None:
        return self._inner.problem
