"""A ``PasPort`` decorator that keeps the PAS calls in flight under an adaptive limit."""

from __future__ import annotations

import asyncio

from service.domain.adaptive import AdaptiveLimit
from service.domain.classification import Action, Transport
from service.domain.ports import PasPort, PasReply, PasRequest

# Endings that say PAS is loaded or unwell; a refusal of one command or an applied call
# says it keeps up. (The circuit breaker counts the same ones.)
OVERLOAD = frozenset({Action.RETRY, Action.UNKNOWN})


class LimitedPas:
    """Waits for a free slot under ``limit`` before each call and feeds the limit the reply."""

    def __init__(self, inner: PasPort, limit: AdaptiveLimit) -> None:
        self._inner = inner
        self._limit = limit
        self._in_flight = 0
        self._waiting = 0
        self._room = asyncio.Condition()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def adjust(self, request: PasRequest) -> PasReply:
        if self._in_flight >= self._limit.limit:
            self._waiting += 1
            try:
                async with self._room:
                    await self._room.wait_for(lambda: self._in_flight < self._limit.limit)
            finally:
                self._waiting -= 1
        self._in_flight += 1
        try:
            reply = await self._inner.adjust(request)
        finally:
            self._in_flight -= 1
            await self._wake()
        if reply.observation.transport is Transport.CIRCUIT_OPEN:
            return reply  # nothing was sent: it says nothing about PAS's load
        if reply.rule.action in OVERLOAD:
            self._limit.on_overload(reply.duration_s)
        else:
            self._limit.on_success()
            await self._wake()
        return reply

    async def _wake(self) -> None:
        room = self._limit.limit - self._in_flight
        if room > 0 and self._waiting:  # nobody waits in the common case: no lock taken
            async with self._room:
                self._room.notify(room)
