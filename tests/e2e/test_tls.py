"""End to end over TLS: the service as a child process, a real broker, and the sandbox served
over https with mutual TLS and a gateway that takes RSA-PSS signatures only."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pa_devkit.keys import DevKeySet
from pa_devkit.sandbox import SandboxConfig, SandboxSecurity, SandboxTls, run_sandbox
from pa_devkit.tls import generate_dev_tls
from service.codec.avro import AvroCodec
from service.tools.generate import generate_commands
from service.tools.send import send_commands
from tests.conftest import CONSUMER_KEY
from tests.e2e.harness import (
    ServiceProcess,
    Topology,
    ledger_per_correlation,
    metric_value,
    originals_per_key,
    wait_for_originals,
)
from tests.kafka_support import create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(300)]

KEY_PASSWORD = "tls-client-key-pw"


async def test_the_service_applies_commands_over_mutual_tls_with_pss_signatures(
    kafka_bootstrap: str, tmp_path: Path, dev_keyset: DevKeySet
) -> None:
    """Configured only through its PA_PAS__* settings (https URL, CA file, client
    certificate with an encrypted key and its password file, RSA-PSS), the service gets every
    command applied exactly once by a sandbox that requires a client certificate and PSS
    signatures; no call is refused, and nothing is logged about plain HTTP."""
    tls = generate_dev_tls(tmp_path / "tls", hosts=("localhost",), client_key_password=KEY_PASSWORD)
    password_file = tmp_path / "tls" / "client-key.password"
    password_file.write_text(KEY_PASSWORD + "\n", encoding="utf-8")
    topology = Topology(kafka_bootstrap)
    await create_topics(kafka_bootstrap, topology.topics(2))
    batch = generate_commands(60, accounts=12, seed=15)
    codec = AvroCodec.from_directory()
    config = SandboxConfig(
        port=0,
        latency_ms=2,
        security=SandboxSecurity.from_keyset(
            dev_keyset, CONSUMER_KEY, signature_methods=["RSA-PSS"]
        ),
        tls=SandboxTls(tls.server_certificate, tls.server_key, client_ca=tls.ca_certificate),
    )
    async with run_sandbox(config) as sandbox:
        port = sandbox.base_url.rsplit(":", 1)[1]
        service = ServiceProcess(
            topology,
            f"https://localhost:{port}",  # the name the certificate carries
            tmp_path,
            dev_keyset,
            PA_PAS__CA_FILE=str(tls.ca_certificate),
            PA_PAS__CLIENT_CERT_FILE=str(tls.client_certificate),
            PA_PAS__CLIENT_KEY_FILE=str(tls.client_key),
            PA_PAS__CLIENT_KEY_PASSWORD_FILE=str(password_file),
            PA_PAS__SIGNATURE_METHOD="RSA-PSS",
        )
        await service.start()
        try:
            await send_commands(topology.kafka, batch.commands, codec=codec)
            outcomes = await wait_for_originals(topology.kafka, codec, batch.distinct_keys, 120)
            await asyncio.sleep(0.5)
            metrics = await service.metrics()
        finally:
            exit_code = await service.terminate()
        ledger = sandbox.ledger.entries()

    assert exit_code == 0, service.log_tail()
    per_key = originals_per_key(outcomes)
    assert len(per_key) == batch.distinct_keys
    assert all(count == 1 for count in per_key.values())
    assert {e["idempotency_key"] for e in outcomes.completed if not e["duplicate"]} == set(per_key)
    applied = ledger_per_correlation(ledger)
    assert len(applied) == batch.distinct_keys
    assert max(applied.values()) == 1
    assert (
        metric_value(metrics, "points_adjuster_pas_requests_total", result="refused", status="401")
        == 0
    )
    log = service.log_path.read_text(errors="replace")
    assert "pas.plain_http" not in log
    assert "service.starting" in log
