"""Building and starting aiokafka clients from settings, with clear start-up errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from service.errors import StartupError
from service.kafka.security import client_security, start_failure
from service.kafka.transactions import KafkaTransactions, transactional_id
from service.settings import KafkaSettings

log = structlog.get_logger("service.kafka")

SERVERS_SETTING = "PA_KAFKA__BOOTSTRAP_SERVERS"
STOP_TIMEOUT_S = 3.0
"""Longest wait for a client to stop. With the broker gone, aiokafka's stop (the producer's
flush, the consumer leaving its group) waits for it indefinitely; what it had not sent is
re-read from the last committed offset on the next start, and the idempotency store turns
that into a re-publication, never a second PAS call."""


async def _start(client: Any, settings: KafkaSettings, what: str) -> None:
    try:
        await asyncio.wait_for(client.start(), settings.startup_timeout_s)
    except (KafkaError, OSError, TimeoutError) as exc:
        await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())
        refused = await start_failure(settings, what, exc)
        if refused is not None:
            raise refused from exc
        text = str(exc)
        name = type(exc).__name__
        reason = (
            "timed out"
            if isinstance(exc, TimeoutError)
            else (text if name in text else f"{name}: {text}")
        )
        raise StartupError(
            f"Kafka {what}",
            f"cannot reach the broker at {settings.bootstrap_servers} ({reason})",
            setting=SERVERS_SETTING,
        ) from exc


def producer_options(settings: KafkaSettings) -> dict[str, Any]:
    """What every producer of the service shares: idempotent, acks=all."""
    return {
        "bootstrap_servers": settings.bootstrap_servers,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": settings.linger_ms,
        # Records are cut down to PA_KAFKA__MAX_MESSAGE_BYTES before they are sent; the
        # producer's own ceiling is never the tighter one.
        "max_request_size": max(1_048_576, settings.max_message_bytes + 65_536),
        "request_timeout_ms": settings.request_timeout_ms,
        **client_security(settings),
    }


@asynccontextmanager
async def open_producer(settings: KafkaSettings) -> AsyncIterator[AIOKafkaProducer]:
    """An idempotent producer waiting for all in-sync replicas (acks=all)."""
    producer = AIOKafkaProducer(
        client_id=f"{settings.client_id}-producer", **producer_options(settings)
    )
    await _start(producer, settings, "producer")
    try:
        yield producer
    finally:
        await _stop(producer, "producer")


@asynccontextmanager
async def open_transactions(settings: KafkaSettings) -> AsyncIterator[KafkaTransactions]:
    """The transactional producer (``PA_KAFKA__TRANSACTIONS``), started: an earlier instance
    under the same transactional id is fenced and its open transaction aborted by then.

    Open it before the consumer, so that the offsets the consumer starts from are never those
    of a transaction still undecided.
    """
    tid = transactional_id(settings)

    def make() -> AIOKafkaProducer:
        return AIOKafkaProducer(
            client_id=f"{settings.client_id}-transactions",
            transactional_id=tid,
            transaction_timeout_ms=settings.transaction_timeout_ms,
            **producer_options(settings),
        )

    transactions = KafkaTransactions(make, group_id=settings.group_id)
    log.info("transactions.enabled", transactional_id=tid)
    await _start(transactions, settings, "transactional producer")
    try:
        yield transactions
    finally:
        await _stop(transactions, "transactional producer")


@asynccontextmanager
async def open_consumer(
    settings: KafkaSettings, *, group_id: str | None = None, **extra: Any
) -> AsyncIterator[AIOKafkaConsumer]:
    """A manual-commit consumer of the command topic's group (not yet subscribed).

    The service's own group (no ``group_id`` given) joins as the static member
    ``PA_KAFKA__GROUP_INSTANCE_ID`` when it is set. A tool reading with a group of its own
    (``dlq replay``) always joins as a dynamic member: run in the service's pod it sees the
    same setting, and two runs of it sharing one instance id would fence each other.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-consumer",
        group_id=group_id or settings.group_id,
        group_instance_id=settings.group_instance_id if group_id is None else None,
        enable_auto_commit=False,
        auto_offset_reset=settings.auto_offset_reset,
        max_poll_records=settings.max_poll_records,
        max_poll_interval_ms=settings.max_poll_interval_ms,
        session_timeout_ms=settings.session_timeout_ms,
        request_timeout_ms=settings.request_timeout_ms,
        isolation_level="read_committed",
        # Small prefetches: memory stays flat however long the backlog is.
        max_partition_fetch_bytes=256 * 1024,
        fetch_max_bytes=4 * 1024 * 1024,
        **client_security(settings),
        **extra,
    )
    await _start(consumer, settings, "consumer")
    try:
        yield consumer
    finally:
        await _stop(consumer, "consumer")


async def _stop(client: AIOKafkaProducer | AIOKafkaConsumer | KafkaTransactions, what: str) -> None:
    try:
        await asyncio.wait_for(client.stop(), STOP_TIMEOUT_S)
    except TimeoutError:
        log.warning(
            "kafka.stop_timeout",
            client=what,
            timeout_s=STOP_TIMEOUT_S,
            detail="the broker did not answer; what was not acknowledged is re-read on restart",
        )
    except asyncio.CancelledError:
        # aiokafka's consumer cancels its own in-flight fetch on stop and lets that
        # cancellation escape when the broker is gone; only a cancellation of ours goes on.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("kafka.stop_failed", client=what, error="CancelledError")
    except (KafkaError, OSError) as exc:
        log.warning("kafka.stop_failed", client=what, error=type(exc).__name__, detail=str(exc))


async def ensure_topics(settings: KafkaSettings, partitions: dict[str, int]) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    async with _admin(settings) as admin:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, count, 1) for name, count in partitions.items() if name not in existing
        ]
        if wanted:
            response = await admin.create_topics(wanted)
            failures = [
                f"{error[0]}: error code {error[1]}"
                for error in response.topic_errors
                if error[1] not in (0, TopicAlreadyExistsError.errno)
            ]
            if failures:
                raise StartupError("Kafka admin", "creating topics failed: " + "; ".join(failures))
        return [topic.name for topic in wanted]


@asynccontextmanager
async def _admin(settings: KafkaSettings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        request_timeout_ms=settings.request_timeout_ms,
        **client_security(settings),
    )
    await _start(admin, settings, "admin client")
    try:
        yield admin
    finally:
        await admin.close()


async def list_topics(settings: KafkaSettings) -> set[str]:
    async with _admin(settings) as admin:
        return set(await admin.list_topics())


async def partitions_of(settings: KafkaSettings, topics: list[str]) -> dict[str, list[int]]:
    """Partition numbers of each existing topic (topics that do not exist are left out)."""
    async with _admin(settings) as admin:
        described = await admin.describe_topics(topics)
    return {
        entry["topic"]: sorted(p["partition"] for p in entry["partitions"])
        for entry in described
        if entry["error_code"] == 0
    }


MESSAGE_LIMIT = "max.message.bytes"


async def topic_message_limits(settings: KafkaSettings, topics: list[str]) -> dict[str, int]:
    """Each topic's ``max.message.bytes`` as the broker applies it (topics not found are
    left out). The publishers keep every record under it: aiokafka's idempotent producer
    cannot recover from a record the broker refused as too large."""
    async with _admin(settings) as admin:
        responses = await admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, name, configs={MESSAGE_LIMIT: None})
                for name in topics
            ]
        )
    limits: dict[str, int] = {}
    for response in responses:
        for error_code, _, _, name, entries in response.resources:
            if error_code:
                continue
            for entry in entries:
                if entry[0] == MESSAGE_LIMIT and str(entry[1]).isdigit():
                    limits[name] = int(entry[1])
    return limits
