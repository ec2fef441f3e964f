"""End to end: every PAS key rotated mid-stream, without a restart and without a failed command."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from pa_devkit.keys import DevKeySet, generate_dev_keyset
from pa_devkit.sandbox.app import run_sandbox
from pa_devkit.sandbox.config import SandboxConfig, SandboxSecurity
from pa_devkit.sandbox.security import load_security_material, secured_hooks
from service.codec.avro import AvroCodec
from service.security.jwe import JweEncrypter
from service.security.keys import kid_for_certificate, load_certificate
from service.tools.generate import generate_commands
from service.tools.send import send_commands
from tests.conftest import CONSUMER_KEY
from tests.e2e.harness import (
    ServiceProcess,
    Topology,
    ledger_per_correlation,
    originals_per_key,
    wait_for_originals,
)
from tests.kafka_support import create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(180)]

COMMANDS = 240
CHUNK = 8


def put(source: Path, target: Path) -> None:
    """Replace ``target`` by a copy of ``source`` in one rename (a new inode), as a
    Secret update or an operator's ``mv`` would."""
    staged = target.with_name(f".{target.name}.new")
    shutil.copyfile(source, staged)
    os.replace(staged, target)


def reload_events(service: ServiceProcess) -> list[dict[str, object]]:
    events = []
    for line in service.log_path.read_text(errors="replace").splitlines():
        if "credentials.reload" not in line:
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


async def wait_for_reloads(service: ServiceProcess, count: int, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(e["event"] == "credentials.reloaded" for e in reload_events(service)) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no reload #{count} in {timeout_s} s:\n{service.log_tail()}")


async def test_every_key_rotates_mid_stream_with_no_failed_command(
    kafka_bootstrap: str, tmp_path: Path, dev_keyset: DevKeySet
) -> None:
    """While commands flow, the PAS encryption certificate (new kid; by a file change), our
    signing key (new PKCS#12; by SIGHUP) and our decryption key (by SIGHUP, the sandbox
    answering with the new key only after the service holds it, answers in flight still
    to the old one) are replaced; every command completes, each applied exactly once, and
    the service logs one credentials.reloaded per rotation and no failure."""
    old, new = dev_keyset, generate_dev_keyset(tmp_path / "new-keys")
    live = tmp_path / "live"
    live.mkdir()
    for source in (
        old.client_signing_p12,
        old.pas_encryption_certificate,
        old.client_decryption_key,
    ):
        put(source, live / source.name)

    # The sandbox trusts both key sets from the start, as PAS does during a rotation.
    security = SandboxSecurity.from_keyset(new, CONSUMER_KEY).with_previous(old, CONSUMER_KEY)
    codec, gateway = secured_hooks(load_security_material(security), clock=time.time)
    codec.respond_to(JweEncrypter(load_certificate(old.client_decryption_certificate)))
    config = SandboxConfig(port=0, security=security, latency_ms=150)

    avro = AvroCodec.from_directory()
    topology = Topology(kafka_bootstrap)
    await create_topics(kafka_bootstrap, topology.topics(2))
    batch = generate_commands(COMMANDS, accounts=30, seed=15)
    async with run_sandbox(config, codec=codec, gateway=gateway) as sandbox:
        service = ServiceProcess(
            topology,
            sandbox.base_url,
            tmp_path,
            old,
            PA_PAS__SIGNING_KEY_PATH=str(live / old.client_signing_p12.name),
            PA_PAS__ENCRYPTION_CERTIFICATE_PATH=str(live / old.pas_encryption_certificate.name),
            PA_PAS__DECRYPTION_KEY_PATH=str(live / old.client_decryption_key.name),
            PA_PAS__CREDENTIALS_POLL_S="0.5",
        )
        await service.start()
        assert service.process is not None

        async def flow() -> None:
            for start in range(0, COMMANDS, CHUNK):
                await send_commands(
                    topology.kafka, batch.commands[start : start + CHUNK], codec=avro
                )
                await asyncio.sleep(0.15)

        sending = asyncio.create_task(flow())
        try:
            await wait_for_originals(topology.kafka, avro, 20, 30)
            # (a) PAS's encryption certificate: the mounted file changes, the poll sees it.
            put(new.pas_encryption_certificate, live / old.pas_encryption_certificate.name)
            await wait_for_reloads(service, 1)
            await asyncio.sleep(1)
            # (b) our signing key: a new PKCS#12 file (same password), then SIGHUP.
            put(new.client_signing_p12, live / old.client_signing_p12.name)
            service.process.send_signal(signal.SIGHUP)
            await wait_for_reloads(service, 2)
            await asyncio.sleep(1)
            # (c) our decryption key: the service first, then PAS answers to the new one.
            put(new.client_decryption_key, live / old.client_decryption_key.name)
            service.process.send_signal(signal.SIGHUP)
            await wait_for_reloads(service, 3)
            codec.respond_to(JweEncrypter(load_certificate(new.client_decryption_certificate)))
            await sending
            outcomes = await wait_for_originals(topology.kafka, avro, batch.distinct_keys, 60)
        finally:
            sending.cancel()
            code = await service.terminate()
        assert code == 0, service.log_tail()
        ledger = sandbox.ledger.entries()

    assert outcomes.failed == [], [e.get("reason") for e in outcomes.failed][:5]
    per_key = originals_per_key(outcomes)
    assert len(per_key) == batch.distinct_keys, "a command has no outcome"
    assert max(per_key.values()) == 1
    applied = ledger_per_correlation(ledger)
    assert len(applied) == batch.distinct_keys, "a command was not applied"
    assert max(applied.values()) == 1, "a command was applied twice"

    events = reload_events(service)
    assert [e["event"] for e in events if e["event"] != "credentials.reload_requested"] == [
        "credentials.reloaded"
    ] * 3
    reloaded = [e for e in events if e["event"] == "credentials.reloaded"]
    assert [e["trigger"] for e in reloaded] == ["files_changed", "signal", "signal"]
    assert [e["changed"] for e in reloaded] == [
        ["encryption_kid"],
        ["signing_fingerprint"],
        ["decryption_fingerprint"],
    ]
    assert reloaded[-1]["encryption_kid"] == kid_for_certificate(
        load_certificate(new.pas_encryption_certificate)
    )
