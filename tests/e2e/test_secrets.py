"""End to end: no secret the service is given shows anywhere it writes, in any encoding."""

from __future__ import annotations

import asyncio
import base64
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
    load_pem_private_key,
)

from pa_devkit.keys import generate_dev_keyset
from pa_devkit.sandbox.app import run_sandbox
from pa_devkit.sandbox.config import SandboxConfig, SandboxSecurity
from service.codec.avro import AvroCodec
from service.tools.generate import generate_commands
from tests.e2e.harness import ServiceProcess, Topology, wait_for_originals
from tests.e2e.test_no_leaks import read_all, send, wait_for_dead_letters
from tests.kafka_support import create_topics
from tests.store_support import own_redis

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.e2e, pytest.mark.timeout(300)]


def encodings(secret: str) -> dict[str, str]:
    """The secret as it is, and as base64 (standard and URL-safe, at each of the three
    alignments a longer encoded text could put it at), hex and percent-encoding would show
    it: every form must stay out of what the service writes."""
    raw = secret.encode()
    forms = {"plain": secret, "hex": raw.hex(), "HEX": raw.hex().upper()}
    forms["percent-encoded"] = quote(secret, safe="")
    for shift in range(3):
        for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            text = encode(b"\0" * shift + raw).decode()
            # Characters that depend on the secret alone: past the first group, before the last.
            forms[f"{name}+{shift}"] = text[4 if shift else 0 : -4]
    return forms


def found_in(text: str, secrets: dict[str, str]) -> list[str]:
    return sorted(
        f"{name} ({form})"
        for name, secret in secrets.items()
        for form, value in encodings(secret).items()
        if value in text
    )


async def run_tool(env: dict[str, str], *argv: str) -> str:
    """``python -m service <argv>``: its stdout and stderr together."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    return out.decode(errors="replace")


async def test_no_secret_shows_in_logs_metrics_events_or_tool_output(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The service, given a distinctive consumer key, PKCS#12 password, decryption key
    password (from a file) and Redis store password (from a file), handles commands that
    complete, one that fails and an undecodable record that is dead-lettered; then neither its
    log, /metrics, /readyz, the outcome and dead-letter records, nor the output of
    ``check`` and ``dlq show`` holds any of those secrets, plain or base64, hex or
    percent-encoded."""
    tag = uuid.uuid4().hex
    secrets = {
        "consumer key": f"ck-{tag[:20]}",
        "PKCS#12 password": f"p12!{tag[:20]}",
        "decryption key password": f"dk!{tag[8:28]}",
        "store password": f"store-{tag[12:32]}",
    }
    keyset = generate_dev_keyset(tmp_path / "keys", p12_password=secrets["PKCS#12 password"])
    plain_key = load_pem_private_key(keyset.client_decryption_key.read_bytes(), None)
    locked_key = tmp_path / "keys" / "client-decryption.locked.pem"
    locked_key.write_bytes(
        plain_key.private_bytes(
            Encoding.PEM,
            PrivateFormat.PKCS8,
            BestAvailableEncryption(secrets["decryption key password"].encode()),
        )
    )
    key_password_file = tmp_path / "decryption-key-password"
    key_password_file.write_text(secrets["decryption key password"] + "\n")
    store_password_file = tmp_path / "store-password"
    store_password_file.write_text(secrets["store password"] + "\n")

    codec = AvroCodec.from_directory()
    topology = Topology(kafka_bootstrap)
    await create_topics(kafka_bootstrap, topology.topics(2))
    commands = generate_commands(6, duplicate_share=0.0, invalid_share=0.0, accounts=6, seed=15)
    unknown = commands.commands[0]["bank_account_number"]  # PAS: 404 ACCOUNT_NOT_FOUND
    junk = [b"\xc3\x01 not a command"]
    sandbox_config = SandboxConfig(
        port=0,
        security=SandboxSecurity.from_keyset(keyset, secrets["consumer key"]),
        unknown_accounts=frozenset({unknown}),
    )
    shown: dict[str, str] = {}
    with own_redis(password=secrets["store password"]) as redis:
        async with run_sandbox(sandbox_config) as sandbox:
            service = ServiceProcess(
                topology,
                sandbox.base_url,
                tmp_path,
                keyset,
                PA_PAS__CONSUMER_KEY=secrets["consumer key"],
                PA_PAS__SIGNING_KEY_PASSWORD=secrets["PKCS#12 password"],
                PA_PAS__DECRYPTION_KEY_PATH=str(locked_key),
                PA_PAS__DECRYPTION_KEY_PASSWORD_FILE=str(key_password_file),
                PA_IDEMPOTENCY__DSN=f"redis://127.0.0.1:{redis.port}/0",
                PA_IDEMPOTENCY__PASSWORD_FILE=str(store_password_file),
                PA_IDEMPOTENCY__REDIS_REQUIRE_DURABLE="false",
                PA_LOG__LEVEL="DEBUG",
            )
            await service.start()
            try:
                await send(topology.kafka, codec, commands.commands, junk)
                outcomes = await wait_for_originals(
                    topology.kafka, codec, len(commands.commands), 120
                )
                assert len(outcomes.originals()) == len(commands.commands), service.log_tail()
                dead = await wait_for_dead_letters(topology.kafka, len(junk))
                async with httpx.AsyncClient() as client:
                    base = f"http://127.0.0.1:{service.metrics_port}"
                    shown["/metrics"] = (await client.get(f"{base}/metrics")).text
                    shown["/readyz"] = (await client.get(f"{base}/readyz")).text
                shown["check"] = await run_tool(service.env, "check")
                shown["dlq show"] = await run_tool(
                    service.env, "dlq", "show", "--partition", "0", "--offset", "0"
                )
            finally:
                exit_code = await service.terminate()
    assert exit_code == 0, service.log_tail()

    assert {"ACCOUNT_NOT_FOUND"} <= {event["reason_code"] for event in outcomes.failed}
    assert "points_adjuster_certificate_expiry_seconds" in shown["/metrics"]
    assert "ok    pas credentials" in shown["check"], shown["check"]
    assert "undecodable" in shown["dlq show"], shown["dlq show"]
    k = topology.kafka
    published = await read_all(k, [k.completed_topic, k.failed_topic])
    shown["service log"] = service.log_path.read_text(errors="replace")
    shown["outcome records"] = repr([(r.key, r.value, r.headers) for r in published])
    shown["outcome events"] = repr([codec.decode(r.value)[1] for r in published if r.value])
    shown["dead letters"] = repr([(r.key, r.value, r.headers) for r in dead])
    assert shown["service log"].count("\n") > 10
    assert {name: found_in(text, secrets) for name, text in shown.items()} == {
        name: [] for name in shown
    }
    assert "ok    idempotency store" in shown["check"], shown["check"]
    # The search is no rubber stamp: a secret buried in a longer base64 text is found.
    buried = base64.b64encode(b"user:" + secrets["store password"].encode()).decode()
    assert "store password (base64+2)" in found_in(f"Authorization: Basic {buried}", secrets)
