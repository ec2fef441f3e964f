"""The broker dies mid-stream, then SIGTERM: a bounded exit, and nothing lost or applied twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pa_devkit.keys import DevKeySet
from pa_devkit.localinfra.kafka import LocalKafka
from pa_devkit.sandbox.app import run_sandbox
from service.codec.avro import AvroCodec
from service.tools.generate import generate_commands
from service.tools.send import send_commands
from tests.e2e.harness import (
    ServiceProcess,
    Topology,
    ledger_per_correlation,
    originals_per_key,
    secure_sandbox,
    wait_for_originals,
)
from tests.kafka_support import create_topics, own_broker

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(300)]

SHUTDOWN_TIMEOUT_S = 5.0
MARGIN_S = 15.0  # the final commit (5 s at most), two client stops (3 s each), exit


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[LocalKafka]:
    """A broker of this test's own, since the test takes it away (and brings it back)."""
    with own_broker(data_dir=tmp_path / "kafka") as broker:
        yield broker


async def test_sigterm_with_the_broker_gone_exits_in_time_and_loses_nothing(
    private_broker: LocalKafka, tmp_path: Path, dev_keyset: DevKeySet
) -> None:
    """Exit 0 within PA_SHUTDOWN_TIMEOUT_S plus a margin; after a restart every command has
    an outcome and PAS applied each exactly once; the log is not flooded meanwhile."""
    codec = AvroCodec.from_directory()
    topology = Topology(private_broker.bootstrap_servers)
    await create_topics(private_broker.bootstrap_servers, topology.topics(2))
    batch = generate_commands(60, accounts=12, seed=3)
    async with run_sandbox(secure_sandbox(dev_keyset, latency_ms=250)) as sandbox:
        first = ServiceProcess(
            topology,
            sandbox.base_url,
            tmp_path,
            dev_keyset,
            PA_SHUTDOWN_TIMEOUT_S=str(SHUTDOWN_TIMEOUT_S),
        )
        await first.start()
        try:
            await send_commands(topology.kafka, batch.commands, codec=codec)
            await wait_for_originals(topology.kafka, codec, 5, 60)  # mid-stream
            await asyncio.to_thread(private_broker.stop)
            await asyncio.sleep(0.5)
            started = time.monotonic()
            code = await first.terminate(timeout_s=SHUTDOWN_TIMEOUT_S + MARGIN_S + 30)
            took = time.monotonic() - started
        finally:
            await first.kill()
        assert code == 0, first.log_tail()
        assert took <= SHUTDOWN_TIMEOUT_S + MARGIN_S, (
            f"took {took:.1f} s to exit\n{first.log_tail()}"
        )
        log = first.log_path.read_text()
        assert "service.stopped" in log
        # aiokafka retries a dead broker every 100 ms and logs each try; repeats are held back.
        assert log.count('"logger": "aiokafka') < 100, "the log drowns in aiokafka's retries"

        await asyncio.to_thread(private_broker.start)  # same data dir and port
        second = ServiceProcess(topology, sandbox.base_url, tmp_path, dev_keyset)
        await second.start()
        try:
            outcomes = await wait_for_originals(topology.kafka, codec, batch.distinct_keys, 120)
        finally:
            assert await second.terminate() == 0, second.log_tail()
        ledger = sandbox.ledger.entries()

    per_key = originals_per_key(outcomes)
    assert len(per_key) == batch.distinct_keys, "a command was lost"
    applied = ledger_per_correlation(ledger)
    assert max(applied.values()) == 1, "a command was applied twice"
    assert len(applied) == batch.distinct_keys - len(batch.invalid_keys)
