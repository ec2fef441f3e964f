"""What the command runner needs of the world around it, as protocols.

The runner (service/kafka/runner.py) drives four things it does not own: the consumer of
the command topic, the outcome publisher, the dead-letter publisher and the processor; with
Kafka transactions, a fifth: the transactional producer. Each is described here by exactly
the part the runner uses, so that the real adapters (aiokafka's ``AIOKafkaConsumer``,
``service.kafka.publisher.OutcomePublisher``, ``service.kafka.deadletter.DeadLetterPublisher``,
``service.domain.processor.Processor``, ``service.kafka.transactions.KafkaTransactions``) and
the fakes of the unit tests (tests/unit/runner_fakes.py, tests/fakes.py) stand in for one
another.

The processor's side is written in the domain's names (``service.domain.decisions``, and
``Decoded``, the type of ``InboundRecord.payload``): what a record, an attempt and a decision
are is the domain's to say; a change there flows through here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Collection, Mapping, Sequence
from typing import Literal, Protocol

from aiokafka import TopicPartition

from service.domain.decisions import Attempt, Decision, InboundRecord, Publish
from service.domain.inbound import Decoded
from service.kafka.deadletter import Failure

__all__ = [
    "CommandConsumer",
    "ConsumerMessage",
    "DeadLetterSender",
    "OutcomeSender",
    "RebalanceListener",
    "RecordProcessor",
    "Transactions",
]


class ConsumerMessage(Protocol):
    """One fetched record, as far as the runner reads it (aiokafka's ``ConsumerRecord``)."""

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def timestamp(self) -> int:
        """Milliseconds since the epoch."""
        ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes]] | None: ...


class RebalanceListener(Protocol):
    """Told by the consumer when partitions are taken away and handed over.

    aiokafka checks that a listener is a ``ConsumerRebalanceListener``: the runner's own
    listener subclasses it, and a fake consumer only needs these two methods.
    """

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None: ...

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None: ...


class CommandConsumer(Protocol):
    """The consumer of the command topic: a group member with manual commits."""

    def subscribe(self, topics: Sequence[str], *, listener: RebalanceListener) -> None:
        """Join the group for ``topics``; ``listener`` hears every rebalance."""
        ...

    async def getmany(
        self, *, timeout_ms: int, max_records: int
    ) -> Mapping[TopicPartition, Sequence[ConsumerMessage]]:
        """Up to ``max_records`` fetched records of unpaused partitions, waiting at most
        ``timeout_ms`` for some; rebalance callbacks run inside this call."""
        ...

    def pause(self, partition: TopicPartition, /) -> None:
        """Fetch nothing more of ``partition`` until it is resumed."""
        ...

    def resume(self, partition: TopicPartition, /) -> None:
        """Fetch ``partition`` again."""
        ...

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit, for each partition, the offset of the next record to read."""
        ...

    async def committed(self, partition: TopicPartition, /) -> int | None:
        """The offset the group holds as committed for ``partition`` now, asked of the broker
        (a transaction's offsets included once it committed); None: nothing committed."""
        ...

    async def position(self, partition: TopicPartition, /) -> int:
        """The offset of the next record ``getmany`` will hand out of ``partition`` (it may
        wait while the consumer looks up where to start)."""
        ...

    def highwater(self, partition: TopicPartition, /) -> int | None:
        """The offset after the last record of ``partition`` as the last fetch answer had it
        (None until the partition was fetched)."""
        ...

    def last_stable_offset(self, partition: TopicPartition, /) -> int | None:
        """The offset up to which every transaction of ``partition`` is decided, from the last
        fetch answer: the end a ``read_committed`` consumer can read to (-1 under
        ``read_uncommitted``, None until the partition was fetched)."""
        ...


class Transactions(Protocol):
    """The transactional producer, as the runner drives it (``PA_KAFKA__TRANSACTIONS``).

    The publishers send through the same producer, into the open transaction. Any exception
    from one of these calls (or from a send, or a delivery) leaves the producer unusable:
    only ``renew`` may follow.
    """

    async def begin(self) -> None:
        """Open a transaction."""
        ...

    async def send_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Add the consumer group's offsets (the next record to read, per partition) to the
        open transaction."""
        ...

    async def commit(self) -> None:
        """Commit the open transaction: its records and offsets become visible together."""
        ...

    async def renew(self) -> None:
        """Replace the producer with a new one under the same transactional id; once this
        returns, the broker has ended the last transaction of the old one (committed if its
        commit had got through, aborted otherwise)."""
        ...


class OutcomeSender(Protocol):
    """Publishes the outcome event of a decision."""

    async def send(self, decision: Publish) -> Awaitable[object]:
        """Queue the event; the awaitable resolves (or fails) when the broker answered."""
        ...


class DeadLetterSender(Protocol):
    """Copies a failed record to the dead-letter (or review) topic."""

    async def send(
        self,
        *,
        topic: str,
        partition: int,
        offset: int,
        timestamp_ms: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] | None,
        failure: Failure,
        target: Literal["dlt", "review"],
    ) -> Awaitable[object]:
        """Queue the copy; the awaitable resolves (or fails) when the broker answered."""
        ...


class RecordProcessor(Protocol):
    """Decides what to do with one command record (the domain step)."""

    def payload_of(self, value: bytes | None) -> Decoded | None:
        """The value decoded once, handed back in ``InboundRecord.payload`` (None: not read)."""
        ...

    def ordering_key(self, record: InboundRecord) -> str | None:
        """The key whose records must run one after the other (the account), if readable."""
        ...

    async def prepare(self, value: bytes | None) -> None:
        """Fetch what decoding ``value`` needs (its payload was ``Unresolved``: a writer
        schema from the registry); raises while that cannot be had."""
        ...

    async def handle(self, record: InboundRecord, attempt: Attempt) -> Decision:
        """Decide, once, for ``record``; a ``Retry`` asks for it again later."""
        ...

    async def published(self, decision: Publish) -> None:
        """The outcome of ``decision`` was acknowledged by the broker (with transactions: the
        transaction carrying it committed)."""
        ...

    def abandon(self, decision: Decision) -> None:
        """``decision`` will not be published here (its partition moved)."""
        ...
