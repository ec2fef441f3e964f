"""Test doubles shared by the unit tests: clocks that move when told to, and a PAS and a
history that answer from a script.

The fakes of the command runner's Kafka ports live in ``tests/unit/runner_fakes.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from service.domain.ports import PasReply, PasRequest
from service.domain.reconcile import HistoryLookup
from service.kafka.sizing import record_size


class FakeClock:
    """Monotonic seconds that move only when the test says so; ``sleep`` moves them too and
    records how long each sleep was."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class FakeWallClock:
    """A wall clock (aware datetimes) that moves only when told to."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Gated:
    """What a test controls of a fake's calls: ``gate`` holds every call while it is clear
    (it starts set); ``entered`` is set when a call comes in; ``cancel_next`` makes the next
    call raise ``CancelledError``, as if its task were cancelled mid-call."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()
        self.cancel_next = False

    async def come_in(self) -> None:
        """What each call goes through before it answers."""
        self.entered.set()
        if self.cancel_next:
            self.cancel_next = False
            raise asyncio.CancelledError
        await self.gate.wait()


class ScriptedPas(Gated):
    """A ``PasPort`` answering from a script, recording every request and its deadline.

    Replies come in turn; with ``repeat_last`` the last one answers every later call, without
    it a call beyond the script fails the test. The test holds or cancels calls as
    :class:`Gated` says.
    """

    def __init__(self, *replies: PasReply, repeat_last: bool = False) -> None:
        super().__init__()
        self.script = list(replies)
        self.repeat_last = repeat_last
        self.requests: list[PasRequest] = []
        self.deadlines: list[float] = []

    def then(self, *replies: PasReply) -> None:
        self.script.extend(replies)

    async def adjust(self, request: PasRequest, *, deadline: float) -> PasReply:
        self.requests.append(request)
        self.deadlines.append(deadline)
        await self.come_in()
        assert self.script, "PAS was called more often than the test scripted"
        if self.repeat_last and len(self.script) == 1:
            return self.script[0]
        return self.script.pop(0)


class FakeHistory(Gated):
    """A ``HistoryPort`` answering from a script, recording the accounts looked up, the
    correlation ids and the deadlines they came with. The test holds or cancels lookups as
    :class:`Gated` says.
    """

    def __init__(self, *lookups: HistoryLookup) -> None:
        super().__init__()
        self.script = list(lookups)
        self.accounts: list[str] = []
        self.correlation_ids: list[str | None] = []
        self.deadlines: list[float | None] = []

    def then(self, *lookups: HistoryLookup) -> None:
        self.script.extend(lookups)

    async def lookup(
        self,
        account_number: str,
        *,
        correlation_id: str | None = None,
        deadline: float | None = None,
    ) -> HistoryLookup:
        self.accounts.append(account_number)
        self.correlation_ids.append(correlation_id)
        self.deadlines.append(deadline)
        await self.come_in()
        assert self.script, "the history was looked up more often than the test scripted"
        return self.script.pop(0)


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @property
    def size(self) -> int:
        return record_size(self.key, self.value, self.headers)

    @property
    def header(self) -> dict[str, bytes]:
        return dict(self.headers)


@dataclass
class RecordingProducer:
    """Records every send; answers each with the next scripted outcome: ``ack``, ``broker``
    (the delivery future fails as too large), ``producer`` (``send`` itself raises as too
    large) or ``timeout`` (the delivery fails for another reason). Acks once the script ends."""

    script: list[str] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        assert not (key is None and value is None), "aiokafka refuses a record with neither"
        action = self.script.pop(0) if self.script else "ack"
        if action == "producer":
            raise MessageSizeTooLargeError("over max_request_size")
        self.sent.append(Sent(topic, key, value, list(headers or [])))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if action == "broker":
            future.set_exception(MessageSizeTooLargeError())
        elif action == "timeout":
            future.set_exception(KafkaTimeoutError())
        else:
            future.set_result(len(self.sent) - 1)
        return future
