"""Decorators that keep PAS requests under an adaptive limit, paced after a 429.

Adjustment calls (``LimitedPas``) and history lookups (``LimitedHistory``) go to the same
PAS, so they take their slots from one pool (``CallSlots``): a lookup waits for a slot, and
after a 429 for its turn, like a call, never past its deadline. Only adjustment calls teach
the limit and the pacer: a lookup is rare (one after an unknown outcome) and reads, so how
it ends says little about how PAS copes with adjustments.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Unpack

from service.domain.adaptive import AdaptiveLimit, RatePacer
from service.domain.classification import HELD_BACK, UNHEALTHY, Observation, Transport
from service.domain.ports import PasPort, PasReply, PasRequest
from service.domain.reconcile import HistoryFailed, HistoryLookup
from service.pas.history import LookupOptions, TimedHistoryPort

RATE_LIMITED = 429


@dataclass(frozen=True, slots=True)
class Deferral:
    """No slot, or no paced turn, came before the deadline: nothing was sent; try again in
    ``retry_after_s`` seconds (the paced turn's distance, when that is what was missing)."""

    problem: str
    retry_after_s: float


def held_back(deferral: Deferral) -> PasReply:
    """A call our own limiter held back (classified: retry, not counted as an attempt)."""
    return PasReply(
        Observation(transport=Transport.DEFERRED),
        0.0,
        retry_after_s=deferral.retry_after_s,
        problem=deferral.problem,
    )


class CallSlots:
    """The PAS requests in flight, held under ``limit``; after a 429, ``pacer`` spaces them."""

    def __init__(self, limit: AdaptiveLimit, pacer: RatePacer | None = None) -> None:
        self.limit = limit
        self.pacer = pacer
        self._in_flight = 0
        self._waiting = 0
        self._room = asyncio.Condition()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def take(self, deadline: float) -> Deferral | None:
        """Wait for a slot and a turn, but never past ``deadline``.

        ``None`` once the slot is taken (hand it back with :meth:`give_back` when the request
        is over); else a :class:`Deferral` (nothing is held then, and no paced turn booked:
        a turn booked and left unused would push every later call's turn further out).
        """
        if self._in_flight >= self.limit.limit:
            self._waiting += 1
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                    async with self._room:
                        await self._room.wait_for(lambda: self._in_flight < self.limit.limit)
            except TimeoutError:
                return Deferral("no PAS call slot came free before the call's deadline", 0.5)
            finally:
                self._waiting -= 1
        self._in_flight += 1
        try:
            if self.pacer is not None:
                wait = self.pacer.wait_s()
                if wait > 0 and time.monotonic() + wait >= deadline:
                    await self.give_back()
                    return Deferral("paced after a 429: no turn before the call's deadline", wait)
                if (pause := self.pacer.delay()) > 0:
                    await asyncio.sleep(pause)
        except asyncio.CancelledError:
            await self.give_back()
            raise
        return None

    async def give_back(self) -> None:
        """The request is over: free its slot, and let waiters in (the limit may have grown)."""
        self._in_flight -= 1
        room = self.limit.limit - self._in_flight
        if room > 0 and self._waiting:  # nobody waits in the common case: no lock taken
            async with self._room:
                self._room.notify(room)


class LimitedPas:
    """Takes a slot (and, after a 429, a turn) before each call, and feeds the limit and the
    pacer the reply. ``slots`` may be shared with :class:`LimitedHistory`."""

    def __init__(
        self, inner: PasPort, limit: AdaptiveLimit, pacer: RatePacer | None = None
    ) -> None:
        self._inner = inner
        self.slots = CallSlots(limit, pacer)

    @property
    def in_flight(self) -> int:
        return self.slots.in_flight

    async def adjust(self, request: PasRequest, *, deadline: float) -> PasReply:
        """Wait for a slot and a turn, but never past ``deadline``: a call that could not
        start in time is reported as not sent, so its claim never outlives its lease."""
        deferral = await self.slots.take(deadline)
        if deferral is not None:
            return held_back(deferral)
        try:
            reply = await self._inner.adjust(request, deadline=deadline)
            self._learn(reply)
            return reply
        finally:
            await self.slots.give_back()

    def _learn(self, reply: PasReply) -> None:
        if reply.observation.transport in HELD_BACK:
            return  # nothing was sent: it says nothing about PAS's load
        limit, pacer = self.slots.limit, self.slots.pacer
        if reply.rule.action in UNHEALTHY:
            limit.on_overload(reply.duration_s)
            if pacer is not None and reply.observation.status == RATE_LIMITED:
                pacer.on_throttled()
        else:
            limit.on_success()
            if pacer is not None:
                pacer.on_accepted()


class LimitedHistory:
    """Takes a slot from ``slots`` (and, after a 429, a turn) before each lookup, within the
    lookup's deadline: the caller's, else ``call_timeout_s`` from now. The same deadline
    goes down to the exchange, so waiting and reading together end by it."""

    def __init__(self, inner: TimedHistoryPort, slots: CallSlots, call_timeout_s: float) -> None:
        self._inner = inner
        self._slots = slots
        self._call_timeout_s = call_timeout_s

    async def lookup(self, account_number: str, **options: Unpack[LookupOptions]) -> HistoryLookup:
        deadline = options.get("deadline")
        if deadline is None:
            deadline = options["deadline"] = time.monotonic() + self._call_timeout_s
        deferral = await self._slots.take(deadline)
        if deferral is not None:
            return HistoryFailed(deferral.problem, None, retry_in_s=deferral.retry_after_s)
        try:
            return await self._inner.lookup(account_number, **options)
        finally:
            await self._slots.give_back()
