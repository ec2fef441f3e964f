"""``points-adjuster-devkit demo``: everything on one machine, end to end, with a summary."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx

from pa_devkit.keys import DEV_P12_PASSWORD, DevKeySet, generate_dev_keyset
from pa_devkit.localinfra.broker_config import free_port
from pa_devkit.sandbox.app import run_sandbox
from pa_devkit.sandbox.config import SandboxConfig, SandboxSecurity, SandboxTls
from pa_devkit.tls import generate_dev_tls
from service.codec.avro import AvroCodec
from service.kafka.clients import ensure_topics
from service.settings import KafkaSettings
from service.tools.generate import generate_commands
from service.tools.outcomes import OutcomeLog, wait_for_outcomes
from service.tools.send import send_commands

UNDECODABLE = (b"not avro at all", b"\xc3\x01\x00\x00\x00\x00\x00\x00\x00\x00garbage", b"")


@contextmanager
def local_broker(bootstrap_servers: str | None) -> Iterator[str]:
    if bootstrap_servers:
        yield bootstrap_servers
        return
    from pa_devkit.localinfra.kafka import LocalKafka

    print("starting a local Kafka broker (the first run downloads its jars)...", flush=True)
    with LocalKafka(port=0) as broker:
        yield broker.bootstrap_servers


@asynccontextmanager
async def service_process(env: dict[str, str], log_path: Path) -> AsyncIterator[None]:
    """``points-adjuster run`` as a child process, stopped with SIGTERM on the way out."""
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "run", env=env, stdout=log_file, stderr=log_file
        )
        try:
            yield
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 30)
                except TimeoutError:
                    process.kill()
                    await process.wait()


async def undecodable_count(metrics_url: str) -> int:
    """Sum of the service's undecodable-record counter, read from its /metrics."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(metrics_url)).text
    return int(
        sum(
            float(line.rpartition(" ")[2])
            for line in text.splitlines()
            if line.startswith("points_adjuster_undecodable_records_total{")
        )
    )


DEMO_CONSUMER_KEY = "points-adjuster-demo"


def service_env(
    bootstrap: str,
    pas_url: str,
    workdir: Path,
    metrics_port: int,
    keyset: DevKeySet,
    *,
    ca_file: Path | None = None,
) -> dict[str, str]:
    """The service's environment against a local sandbox: https trusting ``ca_file``, or
    plain http (allowed explicitly: a development run, which the service logs as such)."""
    env = dict(os.environ)
    env.update(
        PA_PAS__CONSUMER_KEY=DEMO_CONSUMER_KEY,
        PA_PAS__SIGNING_KEY_PATH=str(keyset.client_signing_p12),
        PA_PAS__SIGNING_KEY_PASSWORD=DEV_P12_PASSWORD,
        PA_PAS__ENCRYPTION_CERTIFICATE_PATH=str(keyset.pas_encryption_certificate),
        PA_PAS__DECRYPTION_KEY_PATH=str(keyset.client_decryption_key),
        PA_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
        PA_PAS__BASE_URL=pas_url,
        PA_IDEMPOTENCY__SQLITE_PATH=str(workdir / "idempotency.sqlite3"),
        PA_METRICS__PORT=str(metrics_port),
        PA_METRICS__HOST="127.0.0.1",
        PA_LOG__FORMAT="console",
    )
    if ca_file is not None:
        env["PA_PAS__CA_FILE"] = str(ca_file)
    if pas_url.startswith("http://"):
        env["PA_PAS__ALLOW_PLAIN_HTTP"] = "true"
    return env


async def run_demo(*, count: int, latency_ms: float, bootstrap_servers: str | None) -> int:
    started = time.monotonic()
    codec = AvroCodec.from_directory()
    workdir = Path(tempfile.mkdtemp(prefix="points-adjuster-demo-"))
    with local_broker(bootstrap_servers) as bootstrap:
        kafka = KafkaSettings(bootstrap_servers=bootstrap)
        await ensure_topics(
            kafka,
            {
                kafka.command_topic: 3,
                kafka.completed_topic: 3,
                kafka.failed_topic: 3,
                kafka.dead_letter_topic: 1,
                kafka.review_topic: 1,
            },
        )
        keyset = generate_dev_keyset(workdir / "keys")
        tls = generate_dev_tls(workdir / "tls", hosts=("127.0.0.1",))
        sandbox_config = SandboxConfig(
            port=0,
            latency_ms=latency_ms,
            security=SandboxSecurity.from_keyset(keyset, DEMO_CONSUMER_KEY),
            tls=SandboxTls(tls.server_certificate, tls.server_key),
        )
        async with run_sandbox(sandbox_config) as sandbox:
            metrics_port = free_port()
            env = service_env(
                bootstrap,
                sandbox.base_url,
                workdir,
                metrics_port,
                keyset,
                ca_file=tls.ca_certificate,
            )
            log_path = workdir / "service.log"
            async with service_process(env, log_path):
                batch = generate_commands(count, duplicate_share=0.05, invalid_share=0.03)
                await send_commands(kafka, batch.commands, codec=codec, raw_values=UNDECODABLE)
                print(
                    f"sent {len(batch.commands)} commands ({batch.duplicates} repeats,"
                    f" {len(batch.invalid_keys)} invalid) and {len(UNDECODABLE)} undecodable"
                    f" records; waiting for outcomes...",
                    flush=True,
                )
                outcomes = await wait_for_outcomes(kafka, codec, batch.distinct_keys, timeout_s=180)
                skipped = await undecodable_count(f"http://127.0.0.1:{metrics_port}/metrics")
                for _ in range(20):  # the undecodable records may still be on their way
                    if skipped >= len(UNDECODABLE):
                        break
                    await asyncio.sleep(0.5)
                    skipped = await undecodable_count(f"http://127.0.0.1:{metrics_port}/metrics")
            ledger = sandbox.ledger.entries()
    print_summary(batch.distinct_keys, batch.duplicates, outcomes, len(ledger), skipped)
    print("every request went over TLS, JWE-encrypted and OAuth1-signed; the sandbox verified both")
    print(f"service log: {log_path}   ({time.monotonic() - started:.1f} s in all)")
    complete = len(outcomes.originals()) == batch.distinct_keys
    if not complete:
        print("demo: not every command got an outcome; see the service log", file=sys.stderr)
    return 0 if complete else 1


def print_summary(
    distinct: int, repeats: int, outcomes: OutcomeLog, applied: int, undecodable: int
) -> None:
    failed = Counter(e["reason_code"] for e in outcomes.failed if not e["duplicate"])
    rows = [
        ("distinct commands", distinct),
        ("repeated commands sent", repeats),
        ("completed", sum(1 for e in outcomes.completed if not e["duplicate"])),
        *((f"failed: {reason}", n) for reason, n in sorted(failed.items())),
        ("duplicates absorbed (no PAS call)", len(outcomes.duplicates())),
        ("undecodable records dead-lettered", undecodable),
        ("adjustments in the sandbox ledger", applied),
    ]
    width = max(len(label) for label, _ in rows)
    print()
    print("points-adjuster demo summary")
    print("-" * (width + 10))
    for label, value in rows:
        print(f"{label.ljust(width)}  {value:>6}")
    print("-" * (width + 10))
