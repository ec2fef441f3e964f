"""Test doubles shared by the unit tests: clocks that move when told to, a PAS and a history
that answer from a script, and producers that record what they were given (one of them
transactional).

The fakes of the command runner's Kafka ports live in ``tests/unit/runner_fakes.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import (
    IllegalOperation,
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerFenced,
)

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


TRANSACTIONAL_CALLS = ("begin", "send", "delivery", "send_offsets", "commit", "renew")


@dataclass
class TransactionalProducer:
    """A transactional producer over a pretend broker: the runner's ``Transactions`` and the
    publishers' ``RecordSender`` at once.

    Records sent go into the open transaction; ``commit`` makes them visible (``visible``)
    and appends the transaction's offsets to ``group_offsets`` (hand it the fake consumer's
    list of commits: what the group then holds). After a failed call the producer is finished,
    as aiokafka's is: every call but ``renew`` raises, and the open transaction is aborted
    (``aborted``) when ``renew`` starts the next producer.

    ``failures`` scripts the calls that fail, in order: each entry is a call's name (one of
    ``TRANSACTIONAL_CALLS``; ``delivery``: a record's delivery future fails) and the error it
    raises. Three words change what the named call does instead: ``commit`` with ``"lost"``
    commits and then raises (its answer never came), and a call with ``"hang"`` never answers.
    """

    group_offsets: list[dict[TopicPartition, int]]
    failures: list[tuple[str, BaseException | str]] = field(default_factory=list)
    visible: list[Sent] = field(default_factory=list)
    aborted: list[Sent] = field(default_factory=list)
    transactions: list[tuple[list[Sent], dict[TopicPartition, int]]] = field(default_factory=list)
    """Each committed transaction: its records and its offsets."""
    begun: int = 0
    renewals: int = 0
    hold: asyncio.Event = field(default_factory=asyncio.Event)
    """Every commit waits for it (set when the producer is made); clear it to hold one."""
    calls: list[str] = field(default_factory=list)
    """Every call, in order (a failed one too)."""
    _open: list[Sent] | None = None
    _offsets: dict[TopicPartition, int] = field(default_factory=dict)
    _finished: BaseException | None = None

    def __post_init__(self) -> None:
        self.hold.set()

    def _enter(self, call: str) -> BaseException | str | None:
        """Record the call; what the script says it does (None: it works)."""
        self.calls.append(call)
        if self._finished is not None and call != "renew":
            raise AssertionError(f"{call} after a failure ({self._finished!r}): only renew")
        if self.failures and self.failures[0][0] == call:
            return self.failures.pop(0)[1]
        return None

    async def _fail(self, outcome: BaseException | str) -> None:
        if outcome == "hang":
            await asyncio.Event().wait()
        assert isinstance(outcome, BaseException)
        self._finished = outcome
        raise outcome

    async def begin(self) -> None:
        outcome = self._enter("begin")
        if outcome is not None:
            await self._fail(outcome)
        if self._open is not None:
            raise AssertionError("begin inside an open transaction")
        self._open, self._offsets = [], {}
        self.begun += 1

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        outcome = self._enter("send")
        if outcome is not None:
            await self._fail(outcome)
        if self._open is None:
            raise IllegalOperation("Can't send messages while not in transaction")
        self._open.append(Sent(topic, key, value, list(headers or [])))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        failure = (
            self.failures.pop(0)[1] if self.failures and self.failures[0][0] == "delivery" else None
        )
        if isinstance(failure, BaseException):
            future.set_exception(failure)  # aiokafka's producer would still commit the rest
        else:
            future.set_result(len(self._open) - 1)
        return future

    async def send_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        outcome = self._enter("send_offsets")
        if outcome is not None:
            await self._fail(outcome)
        if self._open is None:
            raise IllegalOperation("Not in the middle of a transaction")
        self._offsets.update(offsets)

    async def commit(self) -> None:
        outcome = self._enter("commit")
        await self.hold.wait()
        if outcome is not None and outcome != "lost":
            await self._fail(outcome)
        if self._open is None:
            raise IllegalOperation("no transaction to commit")
        records, offsets = self._open, self._offsets
        self._open, self._offsets = None, {}
        self.visible.extend(records)
        self.transactions.append((records, offsets))
        if offsets:
            self.group_offsets.append(dict(offsets))
        if outcome == "lost":
            await self._fail(KafkaConnectionError("the answer to EndTxn never came"))

    async def renew(self) -> None:
        outcome = self._enter("renew")
        if outcome is not None:
            await self._fail(outcome)  # the old producer stays finished
        if self._open is not None:
            self.aborted.extend(self._open)  # the new producer's start aborts it
        self._open, self._offsets, self._finished = None, {}, None
        self.renewals += 1


FENCED = ProducerFenced()
"""What a producer that another one with its transactional id fenced raises."""
