"""The hostile-input suite: what a hostile producer, a broken dependency and a clumsy operator
do, against the service as a real process, a real broker (topics never created on demand,
as in production) and the PAS sandbox over a socket.

Each case asserts the same promise: the service never exits on its own, every record ends
in an outcome or a dead letter, nothing is applied twice, and memory stays within the
configured budget. Each prints one line of figures; docs/hardening.md records them.
``make test`` runs it at a small size, ``make chaos`` (``--chaos-full``) in full.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from pa_devkit.keys import DevKeySet
from pa_devkit.localinfra.kafka import LocalKafka
from pa_devkit.sandbox.app import RunningSandbox, run_sandbox
from pa_devkit.sandbox.faults import FaultConfig
from service.codec.avro import COMMAND, AvroCodec
from service.tools.generate import generate_commands
from service.tools.send import command_key, send_commands
from tests.e2e.harness import (
    ServiceProcess,
    Topology,
    assert_each_key_once,
    ledger_per_correlation,
    originals_per_key,
    secure_sandbox,
    wait_for_originals,
)
from tests.kafka_support import create_topics, own_broker

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(420)]

QUICK = {
    "PA_KAFKA__REQUEST_TIMEOUT_MS": "5000",
    "PA_KAFKA__SESSION_TIMEOUT_MS": "6000",
    "PA_PROCESSING__FAULT_BACKOFF_MAX_S": "2",
    "PA_SHUTDOWN_TIMEOUT_S": "5",
}
BIG_RECORD_PRODUCER_BYTES = 2_000_000


@pytest.fixture(scope="module")
def strict_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A broker of this module's own that never creates a topic on demand (production-like),
    with a data dir of its own so that it can be stopped and started again."""
    with own_broker(
        data_dir=tmp_path_factory.mktemp("hostile-kafka"),
        extra_properties={"auto.create.topics.enable": "false"},
    ) as broker:
        yield broker


@pytest.fixture
def scale(request: pytest.FixtureRequest) -> int:
    """1 in make test; 8 with --chaos-full (make chaos)."""
    return 8 if request.config.getoption("--chaos-full") else 1


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec.from_directory()


@contextlib.asynccontextmanager
async def big_producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A producer that sends records up to the broker's own limit, as a careless one would."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, max_request_size=BIG_RECORD_PRODUCER_BYTES, acks="all"
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


def command(n: int, **overrides: Any) -> dict[str, Any]:
    """A valid command of its own account and key."""
    base = generate_commands(1, accounts=1, seed=n).commands[0]
    base.update(idempotency_key=f"hostile-{n}-{uuid.uuid4().hex[:6]}", **overrides)
    return base


async def readiness(service: ServiceProcess) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{service.metrics_port}/readyz")
        return response.status_code, response.json()


async def wait_not_ready(service: ServiceProcess, word: str, timeout_s: float) -> dict[str, Any]:
    """Poll /readyz until it is 503 with a reason containing ``word``; return its body."""
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        code, body = await readiness(service)
        if code == 503 and word in str(body.get("reasons")):
            return body
        assert service.process is not None
        assert service.process.returncode is None, service.log_tail()
        await asyncio.sleep(0.3)
    raise AssertionError(f"never not ready for {word!r}; last /readyz: {body}")


async def wait_ready(service: ServiceProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        code, body = await readiness(service)
        if code == 200:
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"not ready again in {timeout_s} s; last /readyz: {body}")


async def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic`` up to its end now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_bytes=4 * 1024 * 1024,
        max_partition_fetch_bytes=2 * 1024 * 1024,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [
                TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []
            ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batches = await consumer.getmany(timeout_ms=1000)
            for tp, messages in batches.items():
                records.extend(m for m in messages if m.offset < ends[tp])
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return records
    finally:
        await consumer.stop()


def peak_rss_mb(service: ServiceProcess) -> float:
    """The service process's peak resident memory so far (VmHWM), in MB."""
    assert service.process is not None
    for line in Path(f"/proc/{service.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def applied_per_key(sandbox: RunningSandbox, commands: list[dict[str, Any]]) -> Counter[str]:
    by_correlation = ledger_per_correlation(sandbox.ledger.entries())
    return Counter(
        {c["idempotency_key"]: by_correlation.get(c["correlation_id"], 0) for c in commands}
    )


def figures(case: str, **values: object) -> None:
    print(f"\nhostile[{case}]: " + ", ".join(f"{k}={v}" for k, v in values.items()))


# -- one record can no longer stop a partition ---------------------------------------------


async def test_oversized_fields_and_records_at_the_broker_limit_never_stop_a_partition(
    strict_broker: LocalKafka, tmp_path: Path, dev_keyset: DevKeySet, codec: AvroCodec
) -> None:
    """A 600 KB correlation id, 900 KB of metadata, a card number in metadata and an
    undecodable record just under the broker's limit, among ordinary commands on the same
    partitions: each gets its outcome or dead letter, the ordinary ones after them are
    applied once, and the service never exits."""
    bootstrap = strict_broker.bootstrap_servers
    topology = Topology(bootstrap)
    await create_topics(bootstrap, topology.topics(2))
    k = topology.kafka
    ordinary = [command(n) for n in range(30)]
    long_correlation = command(100, correlation_id="c" * 600_000)
    huge_metadata = command(101, metadata={f"k{n}": "v" * 9_000 for n in range(100)})
    card_in_metadata = command(102, metadata={"note": "card 4111 1111 1111 1111 on file"})
    hostile = [long_correlation, huge_metadata, card_in_metadata]
    undecodable = b"\xc3\x01" + b"\x00" * 8 + b"4111111111111111" * 64_000  # ~1,024,010 bytes
    async with run_sandbox(secure_sandbox(dev_keyset, latency_ms=5)) as sandbox:
        service = ServiceProcess(topology, sandbox.base_url, tmp_path, dev_keyset, **QUICK)
        await service.start()
        try:
            async with big_producer(bootstrap) as producer:
                for index, item in enumerate([*ordinary[:15], *hostile, *ordinary[15:]]):
                    await producer.send_and_wait(
                        k.command_topic,
                        codec.encode(COMMAND, item),
                        key=command_key(item),
                        partition=index % 2,
                    )
                for partition in (0, 1):
                    await producer.send_and_wait(
                        k.command_topic, undecodable, key=b"poison", partition=partition
                    )
                await producer.send_and_wait(
                    k.command_topic,
                    codec.encode(COMMAND, (last := command(200))),
                    key=command_key(last),
                    partition=0,
                )
            everything = [*ordinary, *hostile, last]
            outcomes = await wait_for_originals(k, codec, len(everything), 90)
            assert service.process is not None
            assert service.process.returncode is None, service.log_tail()
            letters = await read_topic(bootstrap, k.dead_letter_topic)
            rss = peak_rss_mb(service)
        finally:
            assert await service.terminate() == 0, service.log_tail()
        per_key = originals_per_key(outcomes)
        assert set(per_key) == {c["idempotency_key"] for c in everything}
        assert max(per_key.values()) == 1
        by_key = {e["idempotency_key"]: e for e in outcomes.originals()}
        refused = by_key[long_correlation["idempotency_key"]]
        assert refused["reason_code"] == "VALIDATION_FAILED"
        assert len(refused["correlation_id"]) <= 128
        assert any(error["field"] == "correlation_id" for error in refused["errors"])
        assert by_key[huge_metadata["idempotency_key"]]["reason_code"] == "VALIDATION_FAILED"
        carded = by_key[card_in_metadata["idempotency_key"]]
        assert "4111 1111 1111 1111" not in str(carded["metadata"])
        assert "1111" in carded["metadata"]["note"]
        applied = applied_per_key(sandbox, [*ordinary, card_in_metadata, last])
        assert set(applied.values()) == {1}, applied
        assert len(letters) == 2
        for letter in letters:
            headers = dict(letter.headers)
            assert letter.value is None or len(letter.value) < 1_000_000
            assert "value" in headers.get("pa.truncated", b"").decode()
            assert sum(len(n) + len(v) for n, v in letter.headers) <= 4096
        figures(
            "oversized",
            records=len(everything) + 2,
            exits=0,
            lost=len(everything) - len(per_key),
            applied_twice=sum(1 for n in applied.values() if n > 1),
            dead_letters=len(letters),
            peak_rss_mb=round(rss, 1),
        )


# -- faults pause, never exit --------------------------------------------------------------


async def test_a_topic_deleted_under_the_service_pauses_it_until_the_topic_is_back(
    strict_broker: LocalKafka, tmp_path: Path, dev_keyset: DevKeySet, codec: AvroCodec
) -> None:
    """The dead-letter topic is deleted while the service runs: an undecodable record then
    cannot be dead-lettered, the service stays up, /readyz says which topic is missing, and
    once the topic is created again the dead letter goes out and all else completes."""
    bootstrap = strict_broker.bootstrap_servers
    topology = Topology(bootstrap)
    await create_topics(bootstrap, topology.topics(1))
    k = topology.kafka
    async with run_sandbox(secure_sandbox(dev_keyset, latency_ms=5)) as sandbox:
        service = ServiceProcess(topology, sandbox.base_url, tmp_path, dev_keyset, **QUICK)
        await service.start()
        try:
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
            await admin.start()
            try:
                await admin.delete_topics([k.dead_letter_topic])
            finally:
                await admin.close()
            body = await wait_not_ready(service, k.dead_letter_topic, 20)
            commands = [command(n) for n in range(10)]
            await send_commands(k, commands, codec=codec, raw_values=[b"not a command"])
            outcomes = await wait_for_originals(k, codec, len(commands), 60)
            await asyncio.sleep(3)  # the dead letter is still held up, the service still up
            assert service.process is not None
            assert service.process.returncode is None, service.log_tail()
            await create_topics(bootstrap, {k.dead_letter_topic: 1})
            deadline = time.monotonic() + 60
            letters: list[Any] = []
            while time.monotonic() < deadline and not letters:
                letters = await read_topic(bootstrap, k.dead_letter_topic)
                await asyncio.sleep(0.5)
            await wait_ready(service, 30)
        finally:
            assert await service.terminate() == 0, service.log_tail()
    assert len(letters) == 1
    assert letters[0].value == b"not a command"
    assert len(originals_per_key(outcomes)) == len(commands)
    assert "topics missing" in str(body["reasons"])
    figures("topic-deleted", exits=0, lost=0, dead_letters=len(letters), reasons=body["reasons"])


async def test_a_broker_outage_longer_than_every_timeout_pauses_then_finishes_everything(
    strict_broker: LocalKafka, tmp_path: Path, dev_keyset: DevKeySet, codec: AvroCodec, scale: int
) -> None:
    """The broker goes away mid-stream for longer than the request and session timeouts:
    the service stays up and not ready, and once the broker is back every command has
    exactly one outcome and PAS applied each exactly once."""
    bootstrap = strict_broker.bootstrap_servers
    topology = Topology(bootstrap)
    await create_topics(bootstrap, topology.topics(2))
    batch = generate_commands(120, accounts=30, seed=17)
    outage_s = 15.0 * scale if scale > 1 else 15.0
    async with run_sandbox(secure_sandbox(dev_keyset, latency_ms=100)) as sandbox:
        service = ServiceProcess(
            topology,
            sandbox.base_url,
            tmp_path,
            dev_keyset,
            PA_PROCESSING__MAX_IN_FLIGHT="4",
            **QUICK,
        )
        await service.start()
        try:
            await send_commands(topology.kafka, batch.commands, codec=codec)
            await wait_for_originals(topology.kafka, codec, 20, 60)
            strict_broker.stop()
            gone_at = time.monotonic()
            body = await wait_not_ready(service, "kafka", 30)
            while time.monotonic() - gone_at < outage_s:
                assert service.process is not None
                assert service.process.returncode is None, service.log_tail()
                await asyncio.sleep(0.5)
            strict_broker.start()
            outcomes = await wait_for_originals(topology.kafka, codec, batch.distinct_keys, 180)
            await wait_ready(service, 60)
        finally:
            assert await service.terminate() == 0, service.log_tail()
        ledger = sandbox.ledger.entries()
    per_key, applied = assert_each_key_once(outcomes, ledger, batch.distinct_keys)
    figures(
        "broker-outage",
        outage_s=outage_s,
        commands=batch.distinct_keys,
        exits=0,
        lost=batch.distinct_keys - len(per_key),
        applied_twice=sum(1 for n in applied.values() if n > 1),
        reasons=body["reasons"],
    )


# -- never twice -----------------------------------------------------------------------------


async def test_one_key_on_two_partitions_with_a_pas_that_answers_too_late_is_posted_once(
    strict_broker: LocalKafka, tmp_path: Path, dev_keyset: DevKeySet, codec: AvroCodec
) -> None:
    """The same command on two partitions while PAS holds every answer past the call's
    deadline (and applies it): one POST, found applied by reconciliation, one ledger entry,
    one original outcome and a duplicate."""
    bootstrap = strict_broker.bootstrap_servers
    topology = Topology(bootstrap)
    await create_topics(bootstrap, topology.topics(2))
    k = topology.kafka
    faults = FaultConfig.from_dict(
        {"seed": 1, "hang": {"rate": 1.0, "seconds": 3, "applies": True}}
    )
    same = command(300)
    async with run_sandbox(secure_sandbox(dev_keyset, faults=faults)) as sandbox:
        service = ServiceProcess(
            topology,
            sandbox.base_url,
            tmp_path,
            dev_keyset,
            PA_PAS__READ_TIMEOUT_S="1",
            PA_PAS__CALL_TIMEOUT_S="2",
            PA_IDEMPOTENCY__LEASE_S="8",
            PA_RECONCILIATION__SETTLE_S="4",
            **QUICK,
        )
        await service.start()
        try:
            async with big_producer(bootstrap) as producer:
                for partition in (0, 1):
                    await producer.send_and_wait(
                        k.command_topic,
                        codec.encode(COMMAND, same),
                        key=command_key(same),
                        partition=partition,
                    )
            outcomes = await wait_for_originals(k, codec, 1, 60)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(outcomes.duplicates()) < 1:
                await asyncio.sleep(0.5)
                outcomes = await wait_for_originals(k, codec, 1, 0)
        finally:
            assert await service.terminate() == 0, service.log_tail()
        posts = sandbox.faults.counts().get("hang", 0)
        ledger = sandbox.ledger.entries()
    assert posts == 1
    assert len(ledger) == 1
    assert len(outcomes.completed) == 2  # the original and the duplicate
    assert outcomes.failed == []
    assert len(outcomes.duplicates()) == 1
    figures("same-key-two-partitions", posts=posts, ledger_entries=len(ledger), exits=0)


async def test_a_store_deleted_underneath_stops_intake_and_an_empty_store_is_refused(
    strict_broker: LocalKafka, tmp_path: Path, dev_keyset: DevKeySet, codec: AvroCodec
) -> None:
    """The SQLite file is deleted while the service runs: it stops taking records and says
    why; commands sent meanwhile are not applied; after a restart the new, empty store is
    refused because the group has committed offsets (no command is applied twice)."""
    bootstrap = strict_broker.bootstrap_servers
    topology = Topology(bootstrap)
    await create_topics(bootstrap, topology.topics(2))
    k = topology.kafka
    first_batch = [command(n) for n in range(400, 420)]
    async with run_sandbox(secure_sandbox(dev_keyset, latency_ms=5)) as sandbox:
        service = ServiceProcess(topology, sandbox.base_url, tmp_path, dev_keyset, **QUICK)
        await service.start()
        try:
            await send_commands(k, first_batch, codec=codec)
            await wait_for_originals(k, codec, len(first_batch), 60)
            await asyncio.sleep(2)  # offsets committed
            store = tmp_path / "idempotency.sqlite3"
            for path in (
                store,
                store.with_name(store.name + "-wal"),
                store.with_name(store.name + "-shm"),
            ):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            body = await wait_not_ready(service, "store", 20)
            before = len(sandbox.ledger.entries())
            await send_commands(k, [command(n) for n in range(500, 510)], codec=codec)
            await asyncio.sleep(5)
            after = len(sandbox.ledger.entries())
            assert service.process is not None
            assert service.process.returncode is None, service.log_tail()
        finally:
            await service.terminate()
        assert after == before, "records were applied with the store gone"
        assert not store.exists(), "the store was silently re-created under the service"
        again = ServiceProcess(topology, sandbox.base_url, tmp_path, dev_keyset, **QUICK)
        with pytest.raises(AssertionError, match="exited early"):
            await again.start(ready_timeout_s=30)
        assert again.process is not None
        assert again.process.returncode == 2
        refusal = again.log_path.read_text()
        assert "committed offsets" in refusal
        assert "PA_IDEMPOTENCY__ALLOW_EMPTY_STORE" in refusal
    figures(
        "store-deleted", applied_while_lost=after - before, restart_exit=2, reasons=body["reasons"]
    )


# -- bounded memory --------------------------------------------------------------------------


async def test_a_backlog_of_large_records_stays_within_the_buffer_budget(
    strict_broker: LocalKafka, tmp_path: Path, dev_keyset: DevKeySet, codec: AvroCodec, scale: int
) -> None:
    """Hundreds of 500 KB commands (each too large, so each fails validation): every one
    gets its outcome, and the service's peak memory grows by no more than the configured
    buffer budget (16 MiB) and a fixed allowance, however long the backlog."""
    bootstrap = strict_broker.bootstrap_servers
    topology = Topology(bootstrap)
    await create_topics(bootstrap, topology.topics(3))
    k = topology.kafka
    count = 150 * scale
    budget_mb = 16
    async with run_sandbox(secure_sandbox(dev_keyset, latency_ms=5)) as sandbox:
        service = ServiceProcess(
            topology,
            sandbox.base_url,
            tmp_path,
            dev_keyset,
            PA_PROCESSING__MAX_BUFFERED_BYTES=str(budget_mb * 1024 * 1024),
            **QUICK,
        )
        await service.start()
        try:
            warm = [command(n) for n in range(600, 610)]
            await send_commands(k, warm, codec=codec)
            await wait_for_originals(k, codec, len(warm), 60)
            idle_rss = peak_rss_mb(service)
            large = [command(1000 + n, adjustment_reason="x") for n in range(count)]
            async with big_producer(bootstrap) as producer:
                for n, item in enumerate(large):
                    item["metadata"] = {"blob": "b" * 500_000}
                    await producer.send(
                        k.command_topic, codec.encode(COMMAND, item), key=command_key(item)
                    )
                    if n % 50 == 49:
                        await producer.flush()
                await producer.flush()
            outcomes = await wait_for_originals(k, codec, len(warm) + count, 300)
            peak = peak_rss_mb(service)
        finally:
            assert await service.terminate() == 0, service.log_tail()
    assert len(originals_per_key(outcomes)) == len(warm) + count
    growth = peak - idle_rss
    allowance_mb = 3 * budget_mb + 48  # decoded copies of buffered records, fetch buffers
    figures(
        "large-backlog",
        records=count,
        record_kb=500,
        budget_mb=budget_mb,
        idle_rss_mb=round(idle_rss, 1),
        peak_rss_mb=round(peak, 1),
        growth_mb=round(growth, 1),
    )
    assert growth < allowance_mb, f"grew by {growth:.0f} MB with a {budget_mb} MB budget"
