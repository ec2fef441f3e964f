"""``run --workers 2`` end to end: two consumer processes in one group under one parent,
sharing one SQLite store, against the real broker and the sandbox over a socket.

The oracle is the sandbox's ledger (each key applied once) and the outcome topics (one
original outcome per key), as in tests/chaos/oracle.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from pa_devkit.keys import DevKeySet
from pa_devkit.sandbox.app import run_sandbox
from service.codec.avro import COMMAND, AvroCodec
from service.kafka.clients import open_producer
from service.tools.generate import generate_commands
from service.tools.send import send_commands
from tests.chaos.oracle import applications_per_key, wait_until
from tests.e2e.harness import (
    ServiceProcess,
    Topology,
    assert_each_key_once,
    metric_value,
    originals_per_key,
    run_until_settled,
    secure_sandbox,
    settled_originals,
    wait_for_originals,
)
from tests.kafka_support import create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(400)]

PARTITIONS = 4
SHUTDOWN_TIMEOUT_S = 5.0
MARGIN_S = 15.0  # as tests/e2e/test_shutdown.py: the final commits, the clients' stops, exit
WORKERS_ENV = {
    "PA_WORKERS": "2",
    "PA_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S),
    "PA_KAFKA__SESSION_TIMEOUT_MS": "6000",
    # A claim left by the killed worker expires soon, so its keys finish within the test.
    "PA_IDEMPOTENCY__LEASE_S": "10",
    "PA_PAS__CALL_TIMEOUT_S": "4",
}


@pytest.fixture
def codec() -> AvroCodec:
    return AvroCodec.from_directory()


def metric_sum(text: str, name: str, **labels: str) -> dict[str, float]:
    """The value of ``name`` with ``labels`` per worker, read from the parent's /metrics."""
    return {worker: metric_value(text, name, worker=worker, **labels) for worker in ("0", "1")}


def worker_pids(log_path: Path) -> dict[int, int]:
    """The pid of each worker's latest start, from the parent's ``worker.started`` lines."""
    pids: dict[int, int] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if '"worker.started"' in line:
            event = json.loads(line)
            pids[int(event["worker"])] = int(event["pid"])
    return pids


def log_events(log_path: Path, name: str) -> list[dict[str, object]]:
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        if f'"{name}"' in line:
            event = json.loads(line)
            if event.get("event") == name:
                found.append(event)
    return found


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url)


async def test_two_workers_share_the_work_one_endpoint_and_one_sigterm_drains_both(
    kafka_bootstrap: str, tmp_path: Path, codec: AvroCodec, dev_keyset: DevKeySet
) -> None:
    """The parent's /metrics carries both workers' counts (their sum is every record), its
    /readyz is ready only with both; SIGHUP reaches both; a second run on the store is
    refused; SIGTERM mid-stream drains both and exits 0; a restart finishes the rest with
    every key applied once."""
    topology = Topology(kafka_bootstrap)
    await create_topics(kafka_bootstrap, topology.topics(PARTITIONS))
    first_batch = generate_commands(200, duplicate_share=0.05, accounts=40, seed=21)
    second_batch = generate_commands(400, accounts=60, seed=22)
    async with run_sandbox(secure_sandbox(dev_keyset, latency_ms=40)) as sandbox:
        service = ServiceProcess(
            topology,
            sandbox.base_url,
            tmp_path,
            dev_keyset,
            **WORKERS_ENV,
            PA_PROCESSING__MAX_BUFFERED="40",
            PA_PROCESSING__MAX_IN_FLIGHT="4",
        )
        base = f"http://127.0.0.1:{service.metrics_port}"
        await service.start()
        try:
            ready = await get(base + "/readyz")
            assert ready.status_code == 200, ready.text
            live = (await get(base + "/livez")).json()
            assert live == {"status": "alive", "workers": 2}

            await send_commands(topology.kafka, first_batch.commands, codec=codec)
            await wait_for_originals(topology.kafka, codec, first_batch.distinct_keys, 120)
            metrics = await service.metrics()
            consumed = metric_sum(
                metrics,
                "points_adjuster_records_consumed_total",
                topic=topology.kafka.command_topic,
            )
            assert sum(consumed.values()) == len(first_batch.commands), consumed
            assert all(count > 0 for count in consumed.values()), consumed  # both worked
            assert metrics.count("# TYPE points_adjuster_records_consumed_total counter") == 1
            assert metric_value(metrics, "points_adjuster_workers_running") == 2

            # A second run on the same SQLite file is refused while the workers hold it.
            second = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "service",
                "run",
                env=service.env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            _, refused = await asyncio.wait_for(second.communicate(), 60)
            assert second.returncode == 2, refused.decode()
            assert b"already in use by another process" in refused

            os.kill(service.process.pid, signal.SIGHUP)  # type: ignore[union-attr]
            await asyncio.sleep(1.5)
            reloads = log_events(service.log_path, "credentials.reload_requested")
            assert {event.get("worker") for event in reloads} >= {0, 1}, reloads

            await send_commands(topology.kafka, second_batch.commands, codec=codec)
            await wait_for_originals(
                topology.kafka, codec, first_batch.distinct_keys + 40, 60
            )  # mid-stream
            started = time.monotonic()
            code = await service.terminate(timeout_s=SHUTDOWN_TIMEOUT_S + MARGIN_S + 30)
            took = time.monotonic() - started
        finally:
            await service.kill()
        assert code == 0, service.log_tail()
        assert took <= SHUTDOWN_TIMEOUT_S + MARGIN_S, f"took {took:.1f} s\n{service.log_tail()}"
        stopped = {event.get("worker") for event in log_events(service.log_path, "service.stopped")}
        assert stopped == {0, 1}
        partial = await wait_for_originals(topology.kafka, codec, 0, 0)
        everything = first_batch.distinct_keys + second_batch.distinct_keys
        assert len(partial.originals()) < everything, "stopped too late to prove much"

        again = ServiceProcess(topology, sandbox.base_url, tmp_path, dev_keyset, **WORKERS_ENV)
        outcomes = await run_until_settled(again, topology.kafka, codec, everything)
        ledger = sandbox.ledger.entries()

    assert_each_key_once(outcomes, ledger, everything)
    # Clean drains commit exactly what was done: the duplicates are the batch's own repeats.
    assert len(outcomes.duplicates()) == first_batch.duplicates


async def send_to_every_partition(
    topology: Topology, commands: list[dict[str, object]], codec: AvroCodec
) -> int:
    """Each command once on every partition of the command topic: the same key read by
    whichever worker owns each partition, at about the same time."""
    kafka = topology.kafka
    sent = 0
    async with open_producer(kafka) as producer:
        futures = []
        for command in commands:
            value = codec.encode(COMMAND, command)
            for partition in range(PARTITIONS):
                futures.append(
                    await producer.send(kafka.command_topic, value=value, partition=partition)
                )
        for future in futures:
            await future
            sent += 1
    return sent


async def test_a_worker_killed_mid_stream_is_restarted_and_every_key_is_applied_once(
    kafka_bootstrap: str, tmp_path: Path, codec: AvroCodec, dev_keyset: DevKeySet
) -> None:
    """Repeated keys on every partition, worker 0 SIGKILLed mid-stream: the parent restarts
    it, readiness names it meanwhile, and the sandbox applied every key exactly once."""
    topology = Topology(kafka_bootstrap)
    await create_topics(kafka_bootstrap, topology.topics(PARTITIONS))
    batch = generate_commands(300, duplicate_share=0.05, accounts=60, seed=31)
    repeated = batch.commands[:40]
    async with run_sandbox(secure_sandbox(dev_keyset, latency_ms=30)) as sandbox:
        service = ServiceProcess(topology, sandbox.base_url, tmp_path, dev_keyset, **WORKERS_ENV)
        base = f"http://127.0.0.1:{service.metrics_port}"
        await service.start()
        try:
            # Interleaved: the repeats on every partition, then the batch.
            await send_to_every_partition(topology, repeated, codec)
            await send_commands(topology.kafka, batch.commands, codec=codec)
            await wait_for_originals(topology.kafka, codec, 60, 60)
            victim = worker_pids(service.log_path)[0]
            os.kill(victim, signal.SIGKILL)
            await asyncio.sleep(0.3)
            not_ready = await get(base + "/readyz")
            assert not_ready.status_code == 503
            assert any(part.startswith("worker 0") for part in not_ready.json()["reasons"])
            outcomes = await settled_originals(
                topology.kafka, codec, batch.distinct_keys, 180, straggler_wait_s=2
            )
            metrics = await service.metrics()
            assert (await get(base + "/readyz")).status_code == 200
        finally:
            code = await service.terminate()
        ledger = sandbox.ledger.entries()

    assert code == 0, service.log_tail()
    died = log_events(service.log_path, "worker.died")
    assert [(event["worker"], event["how"]) for event in died] == [(0, "killed by SIGKILL")]
    assert worker_pids(service.log_path)[0] != victim
    assert metric_value(metrics, "points_adjuster_worker_restarts_total", worker="0") == 1
    keys = {command["idempotency_key"] for command in batch.commands}
    per_key = originals_per_key(outcomes)
    assert set(per_key) == keys
    applied = applications_per_key(ledger, keys)
    assert set(applied) == keys, "a ledger entry no key owns, or a key never applied"
    assert max(applied.values()) == 1, applied.most_common(3)


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie left for its dead parent's reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_when_the_parent_dies_its_workers_drain_and_let_go_of_the_store(
    kafka_bootstrap: str, tmp_path: Path, codec: AvroCodec, dev_keyset: DevKeySet
) -> None:
    """The parent SIGKILLed mid-stream: each worker sees its lifeline close, drains and exits
    within the drain budget; the SQLite lock is free again, and a new run finishes the rest
    with every key applied once."""
    topology = Topology(kafka_bootstrap)
    await create_topics(kafka_bootstrap, topology.topics(PARTITIONS))
    batch = generate_commands(300, accounts=50, seed=41)
    async with run_sandbox(secure_sandbox(dev_keyset, latency_ms=40)) as sandbox:
        service = ServiceProcess(topology, sandbox.base_url, tmp_path, dev_keyset, **WORKERS_ENV)
        await service.start()
        try:
            await send_commands(topology.kafka, batch.commands, codec=codec)
            await wait_for_originals(topology.kafka, codec, 40, 60)
            workers = worker_pids(service.log_path)
            assert len(workers) == 2
            await service.kill()  # SIGKILL: the parent has no say in what follows

            async def workers_gone() -> bool:
                return not any(alive(pid) for pid in workers.values())

            assert await wait_until(workers_gone, SHUTDOWN_TIMEOUT_S + MARGIN_S, poll_s=0.2), (
                service.log_tail()
            )
        finally:
            await service.kill()
        gone = {event.get("worker") for event in log_events(service.log_path, "worker.parent_gone")}
        assert gone == {0, 1}
        stopped = {event.get("worker") for event in log_events(service.log_path, "service.stopped")}
        assert stopped == {0, 1}  # a drain, not a crash

        # It starts: the lock is free, the workers that held it are gone.
        again = ServiceProcess(topology, sandbox.base_url, tmp_path, dev_keyset, **WORKERS_ENV)
        outcomes = await run_until_settled(again, topology.kafka, codec, batch.distinct_keys)
        ledger = sandbox.ledger.entries()

    assert_each_key_once(outcomes, ledger, batch.distinct_keys)


async def test_two_workers_on_postgresql_apply_each_command_once(
    kafka_bootstrap: str,
    tmp_path: Path,
    codec: AvroCodec,
    dev_keyset: DevKeySet,
    fresh_postgres_dsn: str,
) -> None:
    """The shared store works for workers as for replicas: both consume, each command is
    applied once, and the parent's /metrics adds up to every record."""
    topology = Topology(kafka_bootstrap)
    await create_topics(kafka_bootstrap, topology.topics(PARTITIONS))
    batch = generate_commands(200, duplicate_share=0.05, accounts=40, seed=51)
    async with run_sandbox(secure_sandbox(dev_keyset, latency_ms=20)) as sandbox:
        service = ServiceProcess(
            topology,
            sandbox.base_url,
            tmp_path,
            dev_keyset,
            **WORKERS_ENV,
            PA_IDEMPOTENCY__DSN=fresh_postgres_dsn,
        )
        await service.start()
        try:
            await send_commands(topology.kafka, batch.commands, codec=codec)
            outcomes = await settled_originals(topology.kafka, codec, batch.distinct_keys)
            metrics = await service.metrics()
        finally:
            code = await service.terminate()
        ledger = sandbox.ledger.entries()

    assert code == 0, service.log_tail()
    consumed = metric_sum(
        metrics, "points_adjuster_records_consumed_total", topic=topology.kafka.command_topic
    )
    assert sum(consumed.values()) == len(batch.commands), consumed
    assert all(count > 0 for count in consumed.values()), consumed
    assert_each_key_once(outcomes, ledger, batch.distinct_keys)


async def test_a_start_up_error_is_reported_once_by_the_parent_before_any_worker(
    kafka_bootstrap: str, tmp_path: Path, dev_keyset: DevKeySet
) -> None:
    """The topics do not exist: one error line naming them, exit 2, no worker started."""
    topology = Topology(kafka_bootstrap)  # no topics created
    service = ServiceProcess(topology, "http://127.0.0.1:9", tmp_path, dev_keyset, **WORKERS_ENV)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "run",
        env=service.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    text = (out + err).decode()
    assert process.returncode == 2, text
    errors = [line for line in text.splitlines() if line.startswith("points-adjuster:")]
    assert len(errors) == 1, text
    assert "missing: " + topology.kafka.command_topic in errors[0]
    assert "worker.started" not in text
