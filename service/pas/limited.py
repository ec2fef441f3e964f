"""A ``PasPort`` decorator that keeps PAS calls under an adaptive limit, paced after a 429."""

from __future__ import annotations

import asyncio
import time

from service.domain.adaptive import AdaptiveLimit, RatePacer
from service.domain.classification import UNHEALTHY, Observation, Transport
from service.domain.ports import PasPort, PasReply, PasRequest

RATE_LIMITED = 429


def not_sent(problem: str) -> PasReply:
    """A call that ended before its request could leave (classified: retry)."""
    return PasReply(Observation(transport=Transport.POOL_TIMEOUT), 0.0, problem=problem)


class LimitedPas:
    """Waits for a slot under ``limit`` (and, after a 429, for its turn under ``pacer``)
    before each call, and feeds both the reply."""

    def __init__(
        self, inner: PasPort, limit: AdaptiveLimit, pacer: RatePacer | None = None
    ) -> None:
        self._inner = inner
        self._limit = limit
        self._pacer = pacer
        self._in_flight = 0
        self._waiting = 0
        self._room = asyncio.Condition()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def adjust(self, request: PasRequest, *, deadline: float) -> PasReply:
        """Wait for a slot and a turn, but never past ``deadline``: a call that could not
        start in time is reported as not sent, so its claim never outlives its lease."""
        if self._in_flight >= self._limit.limit:
            self._waiting += 1
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                    async with self._room:
                        await self._room.wait_for(lambda: self._in_flight < self._limit.limit)
            except TimeoutError:
                return not_sent("no PAS call slot came free before the call's deadline")
            finally:
                self._waiting -= 1
        self._in_flight += 1
        try:
            if self._pacer is not None and (pause := self._pacer.delay()) > 0:
                if time.monotonic() + pause >= deadline:
                    return not_sent("paced after a 429: no turn before the call's deadline")
                await asyncio.sleep(pause)
            reply = await self._inner.adjust(request, deadline=deadline)
            self._learn(reply)
            return reply
        finally:
            self._in_flight -= 1
            await self._wake()  # a slot is free, and the limit may have grown

    def _learn(self, reply: PasReply) -> None:
        if reply.observation.transport is Transport.CIRCUIT_OPEN:
            return  # nothing was sent: it says nothing about PAS's load
        if reply.rule.action in UNHEALTHY:
            self._limit.on_overload(reply.duration_s)
            if self._pacer is not None and reply.observation.status == RATE_LIMITED:
                self._pacer.on_throttled()
        else:
            self._limit.on_success()
            if self._pacer is not None:
                self._pacer.on_accepted()

    async def _wake(self) -> None:
        room = self._limit.limit - self._in_flight
        if room > 0 and self._waiting:  # nobody waits in the common case: no lock taken
            async with self._room:
                self._room.notify(room)
