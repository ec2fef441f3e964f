"""Kafka transactions with aiokafka against the session's real Kafka 4.x broker.

The proof step of "optional Kafka transactions" (docs/kafka-transactions.md): outcome events
and the consumed offsets committed in one transaction (``send_offsets_to_transaction``), so a
``read_committed`` reader of the outcomes never sees the outcome of a command whose offset was
not committed with it. Nothing here touches the service; each test drives aiokafka directly.

What the tests establish, each against the broker:

- aiokafka speaks v0 of the five transactional APIs (and Produce v7, Fetch v11, ListOffsets
  v3), and the Kafka 4.x broker still accepts every one of them (KIP-896 removed none);
- a committed transaction shows its records to ``read_committed`` readers and commits the
  group's offsets, while a consumer of that group is an active member;
- an aborted transaction's records are seen only by ``read_uncommitted`` readers, and its
  offsets are never committed;
- a second producer with the same ``transactional_id`` fences the first, and how aiokafka
  reports that depends on which call notices it (one of them is an ``AssertionError``);
- a producer killed (SIGKILL) inside a transaction leaves records that ``read_committed``
  readers never see, whether a successor with the same id aborts them at once or the
  coordinator aborts them when the transaction times out; until then the partition's
  last stable offset stops at the first abandoned record, so even records written after
  it by other producers are held back from ``read_committed`` readers.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import ProducerFenced
from aiokafka.protocol.admin import ApiVersionRequest
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.offset import OffsetRequest
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.protocol.transaction import (
    AddOffsetsToTxnRequest,
    AddPartitionsToTxnRequest,
    EndTxnRequest,
    InitProducerIdRequest,
    TxnOffsetCommitRequest,
)
from aiokafka.structs import TopicPartition

from tests.kafka_support import create_topics

pytestmark = pytest.mark.kafka

T = TypeVar("T")

READ_COMMITTED = "read_committed"
READ_UNCOMMITTED = "read_uncommitted"
# aiokafka's fetcher and offset look-up encode the isolation level as this number.
READ_COMMITTED_LEVEL = 1


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def eventually(probe: Callable[[], Awaitable[T]], wanted: T, timeout_s: float = 30) -> T:
    """Call ``probe`` until it returns ``wanted`` (or the time is up); the last answer.

    Transaction markers are written after ``commit_transaction`` returns, so what a reader
    sees settles shortly after the call; the caller asserts on what this returns."""
    last = await probe()
    try:
        async with asyncio.timeout(timeout_s):
            while last != wanted:
                await asyncio.sleep(0.1)
                last = await probe()
    except TimeoutError:
        pass
    return last


async def read_partition(
    bootstrap: str, tp: TopicPartition, isolation_level: str
) -> tuple[int, list[bytes]]:
    """The partition's end offset as ``isolation_level`` sees it (for ``read_committed``:
    the last stable offset) and the values of the records below it, oldest first."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level=isolation_level,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # no group, no committed offset: from the first record
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        end = int((await consumer.end_offsets([tp]))[tp])
        values: list[bytes] = []
        async with asyncio.timeout(30):
            while await consumer.position(tp) < end:
                batches = await consumer.getmany(tp, timeout_ms=500)
                values.extend(record.value for record in batches.get(tp, []))
        return end, values
    finally:
        await consumer.stop()


async def values_seen(bootstrap: str, tp: TopicPartition, isolation_level: str) -> list[bytes]:
    return (await read_partition(bootstrap, tp, isolation_level))[1]


async def group_offsets(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    """The offsets the broker holds as committed for ``group`` (OffsetFetch, not stable-only:
    a transaction's offsets appear here only once the transaction is committed)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {
        TopicPartition(tp.topic, tp.partition): int(meta.offset) for tp, meta in offsets.items()
    }


async def group_state(bootstrap: str, group: str) -> tuple[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    (described,) = response.groups
    _error_code, _group, state, _protocol_type, _protocol, members, *_ = described
    return str(state), len(members)


async def produce_plain(bootstrap: str, topic: str, values: list[bytes], partition: int) -> None:
    """Records written without a transaction (idempotent, acks=all, as the service does)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, partition=partition)
    finally:
        await producer.stop()


def transactional_producer(bootstrap: str, transactional_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=transactional_id)


# --- the protocol versions --------------------------------------------------------------------


async def test_aiokafka_uses_request_versions_the_kafka_4_broker_still_accepts(
    kafka_bootstrap: str,
) -> None:
    """KIP-896 (Kafka 4.0) removed old versions of many requests. For each request a
    transactional producer and a ``read_committed`` reader send, the version aiokafka picks
    from the broker's ApiVersions answer is inside the range the broker accepts. aiokafka
    implements only v0 of the transactional APIs (so no KIP-447 group metadata in
    TxnOffsetCommit and no KIP-890 "transactions v2" EndTxn); the broker keeps v0 of all
    five."""
    client = AIOKafkaClient(bootstrap_servers=kafka_bootstrap)
    await client.bootstrap()
    try:
        response = await client.send(client.get_random_node(), ApiVersionRequest())
    finally:
        await client.close()
    accepted: dict[int, tuple[int, int]] = {
        int(key): (int(low), int(high)) for key, low, high in response.api_versions
    }
    requests: dict[str, Any] = {
        "Produce": ProduceRequest("tid", -1, 30_000, []),
        "Fetch": FetchRequest(500, 1, 1 << 20, READ_COMMITTED_LEVEL, []),
        "ListOffsets": OffsetRequest(-1, READ_COMMITTED_LEVEL, []),
        "InitProducerId": InitProducerIdRequest("tid", 60_000),
        "AddPartitionsToTxn": AddPartitionsToTxnRequest("tid", 0, 0, [("t", [0])]),
        "AddOffsetsToTxn": AddOffsetsToTxnRequest("tid", 0, 0, "group"),
        "TxnOffsetCommit": TxnOffsetCommitRequest("tid", "group", 0, 0, [("t", [(0, 1, "")])]),
        "EndTxn": EndTxnRequest("tid", 0, 0, True),
    }
    chosen = {
        name: int(request.prepare(accepted).API_VERSION) for name, request in requests.items()
    }
    assert chosen == {
        "Produce": 7,
        "Fetch": 11,
        "ListOffsets": 3,
        "InitProducerId": 0,
        "AddPartitionsToTxn": 0,
        "AddOffsetsToTxn": 0,
        "TxnOffsetCommit": 0,
        "EndTxn": 0,
    }
    for name, request in requests.items():
        low, high = accepted[request.API_KEY]
        assert low <= chosen[name] <= high, f"{name}: v{chosen[name]}, broker takes {low}..{high}"


# --- commit and abort -------------------------------------------------------------------------


async def test_a_committed_transaction_shows_its_records_and_commits_the_offsets_it_carries(
    kafka_bootstrap: str,
) -> None:
    """Commands consumed by an active member of a group; their outcomes and the next offsets
    sent in one transaction. After the commit a ``read_committed`` reader sees the outcomes,
    the broker holds exactly the offsets sent as the group's, the member reads them back as
    its own, and the group kept its member (a v0 TxnOffsetCommit carries no member id or
    generation, and the broker takes it from a producer outside the group)."""
    commands, outcomes, group = unique("tx-commands"), unique("tx-outcomes"), unique("tx-group")
    await create_topics(kafka_bootstrap, {commands: 2, outcomes: 1})
    await produce_plain(kafka_bootstrap, commands, [b"c0", b"c1"], partition=0)
    await produce_plain(kafka_bootstrap, commands, [b"c2"], partition=1)

    consumer = AIOKafkaConsumer(
        commands,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    producer = transactional_producer(kafka_bootstrap, unique("tx-commit"))
    await producer.start()
    try:
        consumed: dict[TopicPartition, list[Any]] = {}
        async with asyncio.timeout(30):
            while sum(len(records) for records in consumed.values()) < 3:
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    consumed.setdefault(tp, []).extend(records)
        next_offsets = {tp: records[-1].offset + 1 for tp, records in consumed.items()}
        assert next_offsets == {TopicPartition(commands, 0): 2, TopicPartition(commands, 1): 1}

        decided = [
            b"outcome-" + record.value for records in consumed.values() for record in records
        ]
        assert sorted(decided) == [b"outcome-c0", b"outcome-c1", b"outcome-c2"]

        await producer.begin_transaction()
        for value in decided:
            await producer.send(outcomes, value, partition=0)
        await producer.send_offsets_to_transaction(next_offsets, group)
        await producer.commit_transaction()

        out = TopicPartition(outcomes, 0)
        assert (
            await eventually(lambda: values_seen(kafka_bootstrap, out, READ_COMMITTED), decided)
            == decided
        )
        assert await eventually(lambda: group_offsets(kafka_bootstrap, group), next_offsets) == (
            next_offsets
        )
        for tp, offset in next_offsets.items():
            assert await consumer.committed(tp) == offset
        assert await group_state(kafka_bootstrap, group) == ("Stable", 1)
    finally:
        await producer.stop()
        await consumer.stop()


async def test_an_aborted_transaction_is_invisible_to_read_committed_and_commits_no_offsets(
    kafka_bootstrap: str,
) -> None:
    """Records and offsets sent in a transaction that is aborted: a ``read_uncommitted``
    reader sees the records, a ``read_committed`` one does not, and the group has no offset
    for the partition. The next transaction of the same id (it can only start once the abort
    is complete) commits, and only what it carried shows."""
    commands, outcomes, group = unique("tx-commands"), unique("tx-outcomes"), unique("tx-group")
    await create_topics(kafka_bootstrap, {commands: 2, outcomes: 1})
    out = TopicPartition(outcomes, 0)
    aborted_tp, committed_tp = TopicPartition(commands, 0), TopicPartition(commands, 1)

    producer = transactional_producer(kafka_bootstrap, unique("tx-abort"))
    await producer.start()
    try:
        await producer.begin_transaction()
        for value in (b"aborted-0", b"aborted-1"):
            await producer.send_and_wait(outcomes, value, partition=0)
        await producer.send_offsets_to_transaction({aborted_tp: 2}, group)
        await producer.abort_transaction()

        async with producer.transaction():
            await producer.send(outcomes, b"committed-0", partition=0)
            await producer.send_offsets_to_transaction({committed_tp: 1}, group)
    finally:
        await producer.stop()

    assert await eventually(lambda: group_offsets(kafka_bootstrap, group), {committed_tp: 1}) == {
        committed_tp: 1
    }
    assert await eventually(
        lambda: values_seen(kafka_bootstrap, out, READ_COMMITTED), [b"committed-0"]
    ) == [b"committed-0"]
    assert await values_seen(kafka_bootstrap, out, READ_UNCOMMITTED) == [
        b"aborted-0",
        b"aborted-1",
        b"committed-0",
    ]


# --- zombie fencing ---------------------------------------------------------------------------


@pytest.mark.parametrize("noticed_by", ["commit", "send", "send_offsets"])
async def test_a_second_producer_with_the_same_transactional_id_fences_the_first(
    kafka_bootstrap: str, noticed_by: str
) -> None:
    """A zombie has written a record in an open transaction when its successor starts with
    the same transactional id: the successor's InitProducerId aborts the zombie's transaction
    and bumps the epoch, so the zombie's next request is refused (INVALID_PRODUCER_EPOCH,
    which aiokafka raises as ProducerFenced), and none of its records or offsets commit.

    How aiokafka reports it depends on the call that notices:

    - ``commit``: ``commit_transaction`` raises ProducerFenced (EndTxn refused);
    - ``send``: the send raises ProducerFenced (Produce refused), and so does the commit
      that follows (EndTxn refused);
    - ``send_offsets``: ``send_offsets_to_transaction`` raises ProducerFenced
      (AddOffsetsToTxn refused); that kills aiokafka's sender task and leaves its transaction
      manager in FATAL_ERROR, and a later ``commit_transaction`` fails on an ``assert`` in
      ``TransactionManager._transition_to`` (AssertionError, not a Kafka error; under
      ``python -O`` it would raise ProducerFenced instead). A caller has to treat any
      exception from a transactional call as fatal for the producer.
    """
    commands, outcomes, group = unique("tx-commands"), unique("tx-outcomes"), unique("tx-group")
    await create_topics(kafka_bootstrap, {commands: 1, outcomes: 1})
    out, command_tp = TopicPartition(outcomes, 0), TopicPartition(commands, 0)
    transactional_id = unique("tx-fenced")

    zombie = transactional_producer(kafka_bootstrap, transactional_id)
    await zombie.start()
    successor = transactional_producer(kafka_bootstrap, transactional_id)
    try:
        await zombie.begin_transaction()
        await zombie.send_and_wait(outcomes, b"zombie-0", partition=0)
        await successor.start()  # InitProducerId: aborts the zombie's transaction

        if noticed_by == "commit":
            with pytest.raises(ProducerFenced):
                await zombie.commit_transaction()
        elif noticed_by == "send":
            with pytest.raises(ProducerFenced):
                await zombie.send_and_wait(outcomes, b"zombie-1", partition=0)
            with pytest.raises(ProducerFenced):
                await zombie.commit_transaction()
        else:
            with pytest.raises(ProducerFenced):
                await zombie.send_offsets_to_transaction({command_tp: 5}, group)
            with pytest.raises(
                AssertionError,
                match=re.escape("FATAL_ERROR -> TransactionState.COMMITTING_TRANSACTION"),
            ):
                await zombie.commit_transaction()
            # The transaction's end was already failed with ProducerFenced, on a future no
            # public call awaits any more; taken here (aiokafka internals), or asyncio logs
            # "Future exception was never retrieved" when it is collected.
            ended = zombie._txn_manager.wait_for_transaction_end()
            assert isinstance(ended.exception(), ProducerFenced)

        async with successor.transaction():
            await successor.send(outcomes, b"successor-0", partition=0)
            await successor.send_offsets_to_transaction({command_tp: 1}, group)
    finally:
        await zombie.stop()
        await successor.stop()

    assert await eventually(
        lambda: values_seen(kafka_bootstrap, out, READ_COMMITTED), [b"successor-0"]
    ) == [b"successor-0"]
    assert await eventually(lambda: group_offsets(kafka_bootstrap, group), {command_tp: 1}) == {
        command_tp: 1
    }
    assert (await values_seen(kafka_bootstrap, out, READ_UNCOMMITTED))[0] == b"zombie-0"


# --- a crash inside a transaction -------------------------------------------------------------

# A producer in a process of its own: it opens a transaction, writes three records and the
# offset of a command, prints the records' offsets and waits to be killed.
CRASHING_PRODUCER = """
import asyncio
import re
import sys

from aiokafka import AIOKafkaProducer
from aiokafka.structs import TopicPartition


async def main() -> None:
    bootstrap, transactional_id, timeout_ms, outcomes, commands, group = sys.argv[1:7]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=transactional_id,
        transaction_timeout_ms=int(timeout_ms),
    )
    await producer.start()
    await producer.begin_transaction()
    offsets = []
    for number in range(3):
        sent = await producer.send_and_wait(outcomes, b"abandoned-%d" % number, partition=0)
        offsets.append(sent.offset)
    await producer.send_offsets_to_transaction({TopicPartition(commands, 0): 3}, group)
    print(*offsets, flush=True)
    await asyncio.sleep(3600)


asyncio.run(main())
"""


async def run_and_kill_inside_a_transaction(
    bootstrap: str,
    transactional_id: str,
    timeout_ms: int,
    outcomes: str,
    commands: str,
    group: str,
) -> list[int]:
    """Run CRASHING_PRODUCER until its transaction is open and written to, then SIGKILL it;
    the offsets of its abandoned records."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING_PRODUCER,
        bootstrap,
        transactional_id,
        str(timeout_ms),
        outcomes,
        commands,
        group,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(60):
            line = await process.stdout.readline()
    finally:
        process.kill()  # SIGKILL: no stop(), no abort, no LeaveGroup; the sockets just close
        _stdout, stderr = await process.communicate()
    assert line, f"the crashing producer printed nothing: {stderr.decode(errors='replace')}"
    return [int(offset) for offset in line.split()]


async def test_a_producer_killed_inside_a_transaction_is_aborted_by_its_successor(
    kafka_bootstrap: str,
) -> None:
    """A crash between publish and commit: the killed producer's records are in the log but
    its transaction is open. Until it ends, the partition's last stable offset stays at the
    first abandoned record, so a ``read_committed`` reader sees nothing from there on, even
    a record written afterwards without a transaction. A successor with the same
    transactional id aborts it when it starts: the reader then sees the later record and the
    successor's, never the abandoned ones, and the group holds the successor's offset."""
    commands, outcomes, group = unique("tx-commands"), unique("tx-outcomes"), unique("tx-group")
    await create_topics(kafka_bootstrap, {commands: 1, outcomes: 1})
    out, command_tp = TopicPartition(outcomes, 0), TopicPartition(commands, 0)
    transactional_id = unique("tx-crash")

    abandoned = await run_and_kill_inside_a_transaction(
        kafka_bootstrap, transactional_id, 60_000, outcomes, commands, group
    )
    assert abandoned == [0, 1, 2]
    await produce_plain(kafka_bootstrap, outcomes, [b"plain-after"], partition=0)

    assert await read_partition(kafka_bootstrap, out, READ_COMMITTED) == (0, [])
    assert await read_partition(kafka_bootstrap, out, READ_UNCOMMITTED) == (
        4,
        [b"abandoned-0", b"abandoned-1", b"abandoned-2", b"plain-after"],
    )
    assert await group_offsets(kafka_bootstrap, group) == {}

    successor = transactional_producer(kafka_bootstrap, transactional_id)
    await successor.start()  # InitProducerId: aborts the dead producer's transaction
    try:
        async with successor.transaction():
            await successor.send(outcomes, b"successor-0", partition=0)
            await successor.send_offsets_to_transaction({command_tp: 1}, group)
    finally:
        await successor.stop()

    assert await eventually(
        lambda: values_seen(kafka_bootstrap, out, READ_COMMITTED), [b"plain-after", b"successor-0"]
    ) == [b"plain-after", b"successor-0"]
    assert await eventually(lambda: group_offsets(kafka_bootstrap, group), {command_tp: 1}) == {
        command_tp: 1
    }


async def test_a_producer_killed_inside_a_transaction_with_no_successor_is_aborted_on_timeout(
    kafka_bootstrap: str,
) -> None:
    """The same crash, but no producer with that id ever starts again (a replica that does
    not come back): the transaction coordinator aborts the transaction once
    ``transaction_timeout_ms`` (5 s here) has passed, at its next check
    (``transaction.abort.timed.out.transaction.cleanup.interval.ms``, 10 s by default).
    Until then ``read_committed`` readers of the partition are held back; after it they see
    the later record, never the abandoned ones, and the offsets sent are not committed."""
    commands, outcomes, group = unique("tx-commands"), unique("tx-outcomes"), unique("tx-group")
    await create_topics(kafka_bootstrap, {commands: 1, outcomes: 1})
    out = TopicPartition(outcomes, 0)

    abandoned = await run_and_kill_inside_a_transaction(
        kafka_bootstrap, unique("tx-timeout"), 5_000, outcomes, commands, group
    )
    killed_at = time.monotonic()
    assert abandoned == [0, 1, 2]
    await produce_plain(kafka_bootstrap, outcomes, [b"plain-after"], partition=0)
    assert await read_partition(kafka_bootstrap, out, READ_COMMITTED) == (0, [])

    assert await eventually(
        lambda: values_seen(kafka_bootstrap, out, READ_COMMITTED), [b"plain-after"], timeout_s=60
    ) == [b"plain-after"]
    held_back_s = time.monotonic() - killed_at
    assert held_back_s < 40, f"read_committed readers were held back {held_back_s:.1f} s"
    assert await group_offsets(kafka_bootstrap, group) == {}
    assert await values_seen(kafka_bootstrap, out, READ_UNCOMMITTED) == [
        b"abandoned-0",
        b"abandoned-1",
        b"abandoned-2",
        b"plain-after",
    ]
