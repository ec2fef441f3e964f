"""Running ``points-adjuster run`` as a real child process against a real broker and sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pa_devkit.keys import DevKeySet
from pa_devkit.localinfra.broker_config import free_port
from pa_devkit.sandbox.config import SandboxConfig, SandboxSecurity
from service.codec.avro import AvroCodec
from service.settings import KafkaSettings
from service.tools.outcomes import OutcomeLog, read_outcomes
from tests.conftest import CONSUMER_KEY, pas_key_env


def secure_sandbox(keyset: DevKeySet, **config: Any) -> SandboxConfig:
    """A sandbox that verifies OAuth1 and decrypts JWE like PAS, on a free port."""
    return SandboxConfig(
        port=0, security=SandboxSecurity.from_keyset(keyset, CONSUMER_KEY), **config
    )


@dataclass
class Topology:
    """Topic names and group of one test, so tests never see each other's records."""

    bootstrap: str
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def kafka(self) -> KafkaSettings:
        return KafkaSettings(
            bootstrap_servers=self.bootstrap,
            group_id=f"points-adjuster-{self.suffix}",
            command_topic=f"commands-{self.suffix}",
            completed_topic=f"completed-{self.suffix}",
            failed_topic=f"failed-{self.suffix}",
            dead_letter_topic=f"dlt-{self.suffix}",
            review_topic=f"review-{self.suffix}",
        )

    def topics(self, partitions: int) -> dict[str, int]:
        """All five topics the service uses (the dead-letter and review topics: 1 partition)."""
        k = self.kafka
        return {
            k.command_topic: partitions,
            k.completed_topic: partitions,
            k.failed_topic: partitions,
            k.dead_letter_topic: 1,
            k.review_topic: 1,
        }


STARTED_PIDS: set[int] = set()
"""Service processes started by tests; a test that fails midway leaves none behind."""


def kill_leftovers() -> None:
    """SIGKILL the service processes still alive (checking the pid is still one of ours)."""
    while STARTED_PIDS:
        pid = STARTED_PIDS.pop()
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"service\x00run" in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class ServiceProcess:
    """One ``python -m service run`` child with its own metrics port and log file."""

    def __init__(
        self, topology: Topology, pas_url: str, workdir: Path, keyset: DevKeySet, **extra: str
    ) -> None:
        self.metrics_port = free_port()
        self.log_path = workdir / f"service-{self.metrics_port}.log"
        k = topology.kafka
        self.env = dict(os.environ)
        self.env.update(
            PA_KAFKA__BOOTSTRAP_SERVERS=k.bootstrap_servers,
            PA_KAFKA__GROUP_ID=k.group_id,
            PA_KAFKA__COMMAND_TOPIC=k.command_topic,
            PA_KAFKA__COMPLETED_TOPIC=k.completed_topic,
            PA_KAFKA__FAILED_TOPIC=k.failed_topic,
            PA_KAFKA__DEAD_LETTER_TOPIC=k.dead_letter_topic,
            PA_KAFKA__REVIEW_TOPIC=k.review_topic,
            PA_KAFKA__SESSION_TIMEOUT_MS="10000",
            PA_PAS__BASE_URL=pas_url,
            PA_IDEMPOTENCY__SQLITE_PATH=str(workdir / "idempotency.sqlite3"),
            PA_METRICS__HOST="127.0.0.1",
            PA_METRICS__PORT=str(self.metrics_port),
            PA_LOG__LEVEL="INFO",
        )
        if pas_url.startswith("http://"):  # the sandbox over plain http: a development run
            self.env["PA_PAS__ALLOW_PLAIN_HTTP"] = "true"
        self.env.update(pas_key_env(keyset))
        self.env.update(extra)
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, ready_timeout_s: float = 60.0) -> None:
        log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "run", env=self.env, stdout=log, stderr=log
        )
        log.close()
        STARTED_PIDS.add(self.process.pid)
        deadline = time.monotonic() + ready_timeout_s
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if self.process.returncode is not None:
                    raise AssertionError(f"service exited early:\n{self.log_tail()}")
                try:
                    response = await client.get(f"http://127.0.0.1:{self.metrics_port}/readyz")
                    if response.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError(f"service not ready in {ready_timeout_s} s:\n{self.log_tail()}")

    async def metrics(self) -> str:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{self.metrics_port}/metrics")
            return response.text

    async def terminate(self, timeout_s: float = 40.0) -> int:
        """SIGTERM, then wait for a clean exit; returns the exit code."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), timeout_s)
        STARTED_PIDS.discard(self.process.pid)
        return code

    async def kill(self) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        STARTED_PIDS.discard(self.process.pid)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


async def wait_for_originals(
    kafka: KafkaSettings, codec: AvroCodec, expected: int, timeout_s: float
) -> OutcomeLog:
    """Poll the outcome topics until ``expected`` original outcomes are there."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcomes = await read_outcomes(kafka, codec)
        if len(outcomes.originals()) >= expected or time.monotonic() > deadline:
            return outcomes
        await asyncio.sleep(0.5)


async def settled_originals(
    kafka: KafkaSettings,
    codec: AvroCodec,
    expected: int,
    timeout_s: float = 120.0,
    straggler_wait_s: float = 1.0,
) -> OutcomeLog:
    """Wait for ``expected`` original outcomes, give a straggling extra one (there must be
    none) ``straggler_wait_s`` to show up, then read them all again."""
    await wait_for_originals(kafka, codec, expected, timeout_s)
    await asyncio.sleep(straggler_wait_s)
    return await wait_for_originals(kafka, codec, expected, 5)


async def run_until_settled(
    service: ServiceProcess, kafka: KafkaSettings, codec: AvroCodec, expected: int
) -> OutcomeLog:
    """Start ``service``, wait for ``settled_originals``, then SIGTERM it: it must exit 0."""
    await service.start()
    try:
        return await settled_originals(kafka, codec, expected)
    finally:
        assert await service.terminate() == 0, service.log_tail()


def originals_per_key(outcomes: OutcomeLog) -> Counter[str]:
    return Counter(event["idempotency_key"] for event in outcomes.originals())


def ledger_per_correlation(ledger: list[Any]) -> Counter[str]:
    return Counter(entry.correlation_id for entry in ledger)


def assert_each_key_once(
    outcomes: OutcomeLog, ledger: list[Any], keys: int
) -> tuple[Counter[str], Counter[str]]:
    """``keys`` keys have one original outcome each and the sandbox applied ``keys`` commands
    once each; returns the outcomes per key and the applications per correlation id."""
    per_key = originals_per_key(outcomes)
    assert len(per_key) == keys, f"{len(per_key)} keys have an outcome, {keys} expected"
    assert max(per_key.values()) == 1, per_key.most_common(3)
    applied = ledger_per_correlation(ledger)
    assert len(applied) == keys, f"{len(applied)} commands applied, {keys} expected"
    assert max(applied.values()) == 1, applied.most_common(3)
    return per_key, applied


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        sample_name, _, sample_labels = sample.partition("{")
        present = ",".join(sorted(sample_labels.rstrip("}").split(","))) if sample_labels else ""
        if sample_name == name and present == wanted:
            return float(value)
    return 0.0
