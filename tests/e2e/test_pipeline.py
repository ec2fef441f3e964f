"""End to end: a real broker, the real sandbox over a socket, the service as a child process."""

from __future__ import annotations

from pathlib import Path

import pytest

from pa_devkit.keys import DevKeySet
from pa_devkit.sandbox.app import run_sandbox
from service.codec.avro import AvroCodec
from service.tools.generate import generate_commands
from service.tools.send import send_commands
from tests.e2e.harness import (
    ServiceProcess,
    Topology,
    assert_each_key_once,
    ledger_per_correlation,
    metric_value,
    originals_per_key,
    run_until_settled,
    secure_sandbox,
    settled_originals,
    wait_for_originals,
)
from tests.kafka_support import create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(300)]

UNDECODABLE = [b"plain text", b"\xc3\x01" + b"\x00" * 8 + b"junk", b""]


@pytest.fixture
def codec() -> AvroCodec:
    return AvroCodec.from_directory()


async def test_every_command_gets_exactly_one_outcome_and_is_applied_once(
    kafka_bootstrap: str, tmp_path: Path, codec: AvroCodec, dev_keyset: DevKeySet
) -> None:
    """Repeats, invalid and undecodable records: one outcome per key, one PAS call per valid key."""
    topology = Topology(kafka_bootstrap)
    await create_topics(kafka_bootstrap, topology.topics(3))
    batch = generate_commands(300, duplicate_share=0.06, invalid_share=0.04, accounts=40, seed=7)
    valid_keys = {c["idempotency_key"] for c in batch.commands} - batch.invalid_keys
    async with run_sandbox(secure_sandbox(dev_keyset, latency_ms=5)) as sandbox:
        service = ServiceProcess(topology, sandbox.base_url, tmp_path, dev_keyset)
        await service.start()
        try:
            await send_commands(topology.kafka, batch.commands, codec=codec, raw_values=UNDECODABLE)
            outcomes = await settled_originals(topology.kafka, codec, batch.distinct_keys)
            metrics = await service.metrics()
        finally:
            exit_code = await service.terminate()
        ledger = sandbox.ledger.entries()

    assert exit_code == 0, service.log_tail()
    per_key = originals_per_key(outcomes)
    assert set(per_key) == {c["idempotency_key"] for c in batch.commands}
    assert all(count == 1 for count in per_key.values()), per_key.most_common(3)
    assert len(outcomes.duplicates()) == batch.duplicates
    assert {e["idempotency_key"] for e in outcomes.completed if not e["duplicate"]} == valid_keys
    failed = [e for e in outcomes.failed if not e["duplicate"]]
    assert {e["idempotency_key"] for e in failed} == batch.invalid_keys
    assert all(e["reason_code"] == "VALIDATION_FAILED" and e["errors"] for e in failed)
    # The sandbox ledger is the oracle: each valid command applied exactly once.
    applied = ledger_per_correlation(ledger)
    valid_correlations = {
        c["correlation_id"] for c in batch.commands if c["idempotency_key"] in valid_keys
    }
    assert set(applied) == valid_correlations
    assert max(applied.values()) == 1
    # Per-account order: each account's adjustments were applied in the order sent.
    sent_order: dict[str, list[str]] = {}
    for command in batch.commands:
        if command["idempotency_key"] in valid_keys:
            order = sent_order.setdefault(command["bank_account_number"], [])
            if command["correlation_id"] not in order:
                order.append(command["correlation_id"])
    applied_order: dict[str, list[str | None]] = {}
    for entry in ledger:
        applied_order.setdefault(entry.bank_account_number, []).append(entry.correlation_id)
    assert applied_order == sent_order
    # Every request passed the gateway's OAuth1 check and JWE decryption: none was refused.
    assert (
        metric_value(metrics, "points_adjuster_pas_requests_total", result="refused", status="401")
        == 0
    )
    assert metric_value(
        metrics, "points_adjuster_pas_requests_total", result="applied", status="200"
    ) == len(valid_keys)
    # Undecodable records were counted and skipped, not lost silently.
    undecodable = sum(
        metric_value(metrics, "points_adjuster_undecodable_records_total", reason=reason)
        for reason in ("UNKNOWN_FRAMING", "UNKNOWN_SCHEMA", "EMPTY_RECORD")
    )
    assert undecodable == len(UNDECODABLE)
    assert metric_value(
        metrics, "points_adjuster_records_consumed_total", topic=topology.kafka.command_topic
    ) == len(batch.commands) + len(UNDECODABLE)
    for event in outcomes.completed + outcomes.failed:
        assert event["account_masked"] is None or "*" in event["account_masked"]
        assert "bank_account_number" not in event


async def test_sigterm_mid_stream_loses_nothing_and_a_restart_finishes(
    kafka_bootstrap: str, tmp_path: Path, codec: AvroCodec, dev_keyset: DevKeySet
) -> None:
    """SIGTERM mid-stream drains cleanly; a restart completes the rest and repeats nothing."""
    topology = Topology(kafka_bootstrap)
    await create_topics(kafka_bootstrap, topology.topics(2))
    batch = generate_commands(400, accounts=50, seed=11)
    async with run_sandbox(secure_sandbox(dev_keyset, latency_ms=40)) as sandbox:
        # A small buffer and little concurrency keep most commands unread at the SIGTERM.
        first = ServiceProcess(
            topology,
            sandbox.base_url,
            tmp_path,
            dev_keyset,
            PA_PROCESSING__MAX_BUFFERED="40",
            PA_PROCESSING__MAX_IN_FLIGHT="4",
        )
        await first.start()
        await send_commands(topology.kafka, batch.commands, codec=codec)
        partial = await wait_for_originals(topology.kafka, codec, 60, 60)
        exit_code = await first.terminate()
        assert exit_code == 0, first.log_tail()
        after_stop = await wait_for_originals(topology.kafka, codec, batch.distinct_keys, 0)
        assert len(partial.originals()) >= 60
        assert len(after_stop.originals()) < batch.distinct_keys, "stopped too late to prove much"
        assert "shutdown.requested" in first.log_path.read_text()

        second = ServiceProcess(topology, sandbox.base_url, tmp_path, dev_keyset)
        outcomes = await run_until_settled(second, topology.kafka, codec, batch.distinct_keys)
        ledger = sandbox.ledger.entries()

    assert_each_key_once(outcomes, ledger, batch.distinct_keys)
    # A clean drain commits exactly what was done: nothing is re-read, so no duplicates.
    assert outcomes.duplicates() == []
