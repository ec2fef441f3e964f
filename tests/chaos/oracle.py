"""What the chaos tests share: the sandbox faults they inject, the service settings that let
those faults resolve within a test, the replay of the dead letters once the faults stop
(``replay_and_settle``), and the oracle's readings of the outcome topics, the sandbox ledger
and the consumer group."""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from pa_devkit.sandbox.ledger import LedgerEntry
from service.codec.avro import AvroCodec
from service.domain.reconcile import reference_for
from service.kafka.clients import partitions_of
from service.settings import KafkaSettings, Settings
from service.tools.dlq.kafka import ReplayOptions, ReplayReport, replay_dead_letters
from service.tools.dlq.selection import Selection
from service.tools.outcomes import OutcomeLog, read_outcomes

# 503 without Recoverable may have been applied: reconciliation settles it. 502 marked
# Recoverable and 429s are retried; two attempts make some run out, to the DLT and back.
FAULTS = {
    "seed": 7,
    "errors": [
        {"status": 503, "rate": 0.10, "recoverable": False},
        {"status": 502, "rate": 0.05, "recoverable": True},
    ],
    "hang": {"rate": 0.02, "seconds": 2.5, "applies": True},
    "apply_then_drop": {"rate": 0.01},
    "rate_limit": {"rate_per_s": 80, "burst": 20},
}

# Short timeouts so that faults resolve within the test: a hang outlives the 1 s read
# timeout; reconciliation waits 4 s (longer than the hang) before trusting a lookup; a
# claim left by a killed process expires after 10 s; a whole call lasts 4 s at most.
SERVICE_ENV = {
    "PA_PAS__READ_TIMEOUT_S": "1",
    "PA_PAS__CONNECT_TIMEOUT_S": "1",
    "PA_PAS__POOL_TIMEOUT_S": "2",
    "PA_IDEMPOTENCY__LEASE_S": "10",
    "PA_PAS__CALL_TIMEOUT_S": "4",
    "PA_RECONCILIATION__SETTLE_S": "4",
    "PA_RETRY__INITIAL_BACKOFF_S": "0.1",
    "PA_RETRY__MAX_BACKOFF_S": "1",
    "PA_RETRY__MAX_ATTEMPTS": "2",
    "PA_CIRCUIT__FAILURE_THRESHOLD": "200",
    "PA_SHUTDOWN_TIMEOUT_S": "5",
    "PA_KAFKA__SESSION_TIMEOUT_MS": "6000",
    "PA_LOG__LEVEL": "WARNING",
}


def terminal(event: dict[str, Any]) -> bool:
    """A decided outcome of the key's command: completed, or a failure retrying cannot change.

    A conflict refusal answers another command that reused the key, not the key's own.
    """
    if "points_adjusted" in event:
        return True
    return not event["retryable"] and event["reason_code"] != "IDEMPOTENCY_CONFLICT"


def terminal_ids_per_key(outcomes: OutcomeLog) -> dict[str, set[str]]:
    """Distinct event ids of original terminal outcomes, per idempotency key."""
    found: dict[str, set[str]] = {}
    for event in outcomes.originals():
        if terminal(event):
            found.setdefault(event["idempotency_key"], set()).add(event["event_id"])
    return found


def ledger_entries_per_key(
    ledger: Iterable[LedgerEntry], keys: Iterable[str]
) -> dict[str, list[LedgerEntry]]:
    """The sandbox's ledger entries per idempotency key, found by the ``ref:`` reference the
    service appends to the adjustment reason; an entry no key owns is under ``?<reference>``."""
    reference_to_key = {reference_for(key): key for key in keys}
    found: dict[str, list[LedgerEntry]] = {}
    for entry in ledger:
        reference = entry.adjustment_reason.rsplit(" ", 1)[-1]
        found.setdefault(reference_to_key.get(reference, f"?{reference}"), []).append(entry)
    return found


def applications_per_key(ledger: Iterable[LedgerEntry], keys: Iterable[str]) -> Counter[str]:
    """How many times the sandbox applied each key's adjustment."""
    return Counter(
        {key: len(entries) for key, entries in ledger_entries_per_key(ledger, keys).items()}
    )


async def group_lag(kafka: KafkaSettings, topic: str, group: str) -> int:
    """Records of ``topic`` the service's group has not committed yet."""
    numbers = (await partitions_of(kafka, [topic])).get(topic, [])
    partitions = [TopicPartition(topic, number) for number in numbers]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
        lag = 0
        for tp in partitions:
            lag += ends[tp] - ((await consumer.committed(tp)) or 0)
        return lag
    finally:
        await consumer.stop()


async def replay_and_settle(
    settings: Settings, codec: AvroCodec, valid_keys: set[str], logs: Callable[[], str]
) -> tuple[ReplayReport, OutcomeLog]:
    """Once the faults have stopped: replay what was retryable (``PAS_UNAVAILABLE``) from the
    dead-letter topic, with ``settings`` naming the service's store; assert that every valid
    key gets a terminal outcome and that every record, the replayed ones included, is
    processed and committed (``logs()`` says why not); the replay's report and the outcomes.
    """
    kafka = settings.kafka
    report = await replay_dead_letters(
        settings,
        ReplayOptions(selection=Selection(reasons=frozenset({"PAS_UNAVAILABLE"}))),
        out=io.StringIO(),
        err=io.StringIO(),
    )

    async def every_valid_key_decided() -> bool:
        decided = terminal_ids_per_key(await read_outcomes(kafka, codec))
        return valid_keys <= set(decided)

    assert await wait_until(every_valid_key_decided, 300), logs()

    async def quiet() -> bool:
        return await group_lag(kafka, kafka.command_topic, kafka.group_id) == 0

    assert await wait_until(quiet, 120), logs()
    return report, await read_outcomes(kafka, codec)


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout_s: float, poll_s: float = 1.0
) -> bool:
    """Poll ``check`` until it holds or ``timeout_s`` passes; the last answer."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return True
        await asyncio.sleep(poll_s)
    return bool(await check())
