"""The transactional producer: outcome events and consumed offsets committed together.

With ``PA_KAFKA__TRANSACTIONS`` the runner (:mod:`service.kafka.runner`) publishes only when
it commits: it opens a transaction, sends the outcome events, dead letters and review copies
of the records whose offsets it is about to commit, adds those offsets
(``send_offsets_to_transaction``) and commits. A ``read_committed`` reader sees all of it at
once or none of it, so a crash anywhere leaves no outcome visible whose command is read again.

**One transactional id per instance** (:func:`transactional_id`):
``points-adjuster-<group id>-<group instance id>``. The Helm chart sets the instance id to the
pod's name, so a restarted pod starts under its predecessor's id: starting the producer
(InitProducerId) fences the predecessor and makes the broker abort its open transaction, before
the consumer reads a committed offset. Without an instance id each process takes a random
suffix; a crashed process's open transaction is then aborted only when it times out
(``PA_KAFKA__TRANSACTION_TIMEOUT_MS``), and ``read_committed`` readers of the partitions it
wrote to wait until then.

**A failure ends the producer.** After any exception from a transactional call, aiokafka's
producer is in a state no later call recovers from (docs/kafka-transactions.md; one such error
is an ``AssertionError``). :meth:`KafkaTransactions.renew` stops it and starts a new one under
the same id. The new one's InitProducerId returns only once the broker has ended the old one's
transaction: aborted, or committed if the commit request had reached the coordinator. Its
epoch also fences the old producer, should its sender still be retrying.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from service.settings import KafkaSettings

log = structlog.get_logger("service.kafka")

OLD_PRODUCER_STOP_S = 1.0
"""How long ``renew`` waits for the failed producer to stop. It is fenced by its successor
anyway; waiting longer only delays the successor."""


def transactional_id(settings: KafkaSettings, *, suffix: Callable[[], str] | None = None) -> str:
    """``points-adjuster-<group id>-<group instance id>``, or a random last part (``suffix``)
    when the service is not a static member."""
    last = settings.group_instance_id or (suffix or _random_suffix)()
    return f"points-adjuster-{settings.group_id}-{last}"


def _random_suffix() -> str:
    return uuid.uuid4().hex[:12]


class TransactionalClient(Protocol):
    """The part of aiokafka's ``AIOKafkaProducer`` (with a transactional id) used here."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]: ...

    async def begin_transaction(self) -> None: ...

    async def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, int], group_id: str
    ) -> None: ...

    async def commit_transaction(self) -> None: ...


class KafkaTransactions:
    """The service's transactional producer, replaced whole after any failure (``renew``).

    It is both the publishers' ``RecordSender`` (a send goes into the open transaction) and the
    runner's ``service.kafka.ports.Transactions``. ``make`` builds an unstarted producer
    (``service.kafka.clients.open_transactions`` gives aiokafka's).
    """

    def __init__(self, make: Callable[[], TransactionalClient], *, group_id: str) -> None:
        self._make = make
        self._group_id = group_id
        self._producer: TransactionalClient | None = None
        self.generation = 0
        """How many producers were started (the first, then one per ``renew``)."""

    @property
    def _current(self) -> TransactionalClient:
        if self._producer is None:
            raise KafkaError("the transactional producer is not running")
        return self._producer

    async def start(self) -> None:
        """Start a producer: its InitProducerId fences any earlier one under the same id and
        waits until the broker has ended that one's open transaction."""
        producer = self._make()
        try:
            await producer.start()
        except BaseException:
            await _stop_quietly(producer)
            raise
        self._producer = producer
        self.generation += 1
        log.info("transactions.producer_started", generation=self.generation)

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def renew(self) -> None:
        old, self._producer = self._producer, None
        if old is not None:
            await _stop_quietly(old)
        await self.start()

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        return await self._current.send(
            topic,
            value=value,
            key=key,
            partition=partition,
            timestamp_ms=timestamp_ms,
            headers=headers,
        )

    async def begin(self) -> None:
        await self._current.begin_transaction()

    async def send_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        await self._current.send_offsets_to_transaction(dict(offsets), self._group_id)

    async def commit(self) -> None:
        await self._current.commit_transaction()


async def _stop_quietly(producer: TransactionalClient) -> None:
    """Stop a producer that failed; it is of no further use, whatever its stop says."""
    try:
        await asyncio.wait_for(producer.stop(), OLD_PRODUCER_STOP_S)
    except (TimeoutError, KafkaError, OSError, AssertionError) as exc:
        log.warning("transactions.old_producer_stop_failed", error=type(exc).__name__)
