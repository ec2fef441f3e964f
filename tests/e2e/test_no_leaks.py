"""End to end: no account number, key material or secret in a log line, an event or a header."""

from __future__ import annotations

import asyncio
import base64
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
    pkcs12,
)

from pa_devkit.keys import DevKeySet, generate_dev_keyset
from pa_devkit.sandbox.app import run_sandbox
from pa_devkit.sandbox.config import SandboxConfig, SandboxSecurity
from service.codec.avro import COMMAND, AvroCodec
from service.kafka.clients import open_producer, partitions_of
from service.settings import KafkaSettings
from service.tools.generate import generate_commands
from service.tools.send import command_key
from tests.e2e.harness import ServiceProcess, Topology, wait_for_originals
from tests.kafka_support import create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(300)]

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@dataclass(frozen=True)
class Secrets:
    consumer_key: str
    p12_password: str


@dataclass(frozen=True)
class Read:
    """One record read back from a topic the service writes."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


def key_fragments(keyset: DevKeySet, password: str) -> list[str]:
    """Pieces (24 characters) of the base64 bodies of every private key of the key set."""
    keys = [
        load_pem_private_key(path.read_bytes(), None)
        for path in (keyset.client_decryption_key, keyset.pas_decryption_key)
    ]
    signing, _, _ = pkcs12.load_key_and_certificates(
        keyset.client_signing_p12.read_bytes(), password.encode()
    )
    assert signing is not None
    keys.append(signing)
    fragments = []
    for key in keys:
        for form in (PrivateFormat.PKCS8, PrivateFormat.TraditionalOpenSSL):
            der = key.private_bytes(Encoding.DER, form, NoEncryption())
            body = base64.b64encode(der).decode()
            fragments += [body[i : i + 24] for i in range(0, len(body) - 24, 24)]
    return fragments


async def read_all(settings: KafkaSettings, topics: list[str]) -> list[Read]:
    """Every record of ``topics``, from the beginning to their current end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False, group_id=None
    )
    numbers = await partitions_of(settings, topics)
    partitions = [TopicPartition(t, n) for t, ns in numbers.items() for n in ns]
    read: list[Read] = []
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            for tp, messages in (await consumer.getmany(timeout_ms=1000)).items():
                for message in messages:
                    headers = tuple(message.headers or ())
                    read.append(Read(tp.topic, message.key, message.value, headers))
                    if message.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
    finally:
        await consumer.stop()
    return read


async def send(
    settings: KafkaSettings, codec: AvroCodec, commands: list[dict[str, Any]], raw: list[bytes]
) -> None:
    """The commands (every other one with a traceparent), then the raw values."""
    async with open_producer(settings) as producer:
        futures = []
        for index, command in enumerate(commands):
            headers = []
            if index % 2 == 0:
                parent = f"{index + 1:016x}"
                headers.append(("traceparent", f"00-{TRACE_ID}-{parent}-01".encode()))
            futures.append(
                await producer.send(
                    settings.command_topic,
                    value=codec.encode(COMMAND, command),
                    key=command_key(command),
                    headers=headers,
                )
            )
        for value in raw:
            futures.append(
                await producer.send(
                    settings.command_topic,
                    value=value,
                    headers=[("traceparent", f"00-{TRACE_ID}-{'f' * 16}-01".encode())],
                )
            )
        for future in futures:
            await future


def leaks(text: str, forbidden: dict[str, str]) -> list[str]:
    return sorted({name for name, value in forbidden.items() if value in text})


async def test_no_account_number_key_or_secret_leaves_the_service(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """~50 commands (valid, invalid, repeated, for an unknown account, undecodable) through the
    real service at DEBUG: no log line, outcome event or published header holds a full
    account number, key material, the consumer key or the PKCS#12 password.

    (No password in the PAS URL: httpx refuses to send a request whose URL carries
    credentials along with the OAuth1 Authorization header, so such a URL cannot work.)"""
    secrets = Secrets(
        consumer_key=f"ck-{uuid.uuid4().hex}",
        p12_password=f"p12pw-{uuid.uuid4().hex}",
    )
    keyset = generate_dev_keyset(tmp_path / "keys", p12_password=secrets.p12_password)
    codec = AvroCodec.from_directory()
    topology = Topology(kafka_bootstrap)
    await create_topics(kafka_bootstrap, topology.topics(2))
    batch = generate_commands(48, duplicate_share=0.06, invalid_share=0.15, accounts=12, seed=5)
    commands = batch.commands
    unknown = commands[1]["bank_account_number"]  # PAS answers 404 ACCOUNT_NOT_FOUND for it
    # An account number in a text the service publishes, and in a value it cannot decode.
    commands.append(
        {
            **commands[0],
            "idempotency_key": f"leak-{uuid.uuid4().hex[:8]}",
            "adjustment_reason": f"as agreed for {commands[0]['bank_account_number']} " + "x" * 260,
        }
    )
    raw = [b"plain text " + commands[2]["bank_account_number"].encode(), b"", b"\xc3\x01junk"]
    accounts = {
        command["bank_account_number"]
        for command in commands
        if len(command["bank_account_number"]) >= 8
    }
    forbidden = {f"account {account}": account for account in accounts}
    forbidden |= {
        "consumer key": secrets.consumer_key,
        "PKCS#12 password": secrets.p12_password,
        "PEM marker": "-----BEGIN",
        "PRIVATE KEY": "PRIVATE KEY",
    }
    forbidden |= {
        f"key fragment {i}": f for i, f in enumerate(key_fragments(keyset, secrets.p12_password))
    }

    sandbox_config = SandboxConfig(
        port=0,
        security=SandboxSecurity.from_keyset(keyset, secrets.consumer_key),
        unknown_accounts=frozenset({unknown}),
    )
    with structlog.testing.capture_logs() as sandbox_logs:
        async with run_sandbox(sandbox_config) as sandbox:
            service = ServiceProcess(
                topology,
                sandbox.base_url,
                tmp_path,
                keyset,
                PA_PAS__CONSUMER_KEY=secrets.consumer_key,
                PA_PAS__SIGNING_KEY_PASSWORD=secrets.p12_password,
                PA_LOG__LEVEL="DEBUG",
            )
            await service.start()
            try:
                await send(topology.kafka, codec, commands, raw)
                distinct = len({c["idempotency_key"] for c in commands})
                outcomes = await wait_for_originals(topology.kafka, codec, distinct, 120)
                assert len(outcomes.originals()) == distinct, service.log_tail()
                dead = await wait_for_dead_letters(topology.kafka, len(raw))
            finally:
                exit_code = await service.terminate()
    assert exit_code == 0, service.log_tail()

    assert sandbox.ledger.entries(), service.log_tail()
    log_text = service.log_path.read_text(errors="replace")
    assert log_text.count("\n") > 50  # start-up, every invalid and undecodable record, stop
    k = topology.kafka
    published = await read_all(k, [k.completed_topic, k.failed_topic])
    events = [str(codec.decode(record.value)[1]) for record in published if record.value]
    headers = [str(record.headers) for record in [*published, *dead]]
    found = {
        "service log": leaks(log_text, forbidden),
        "outcome events": leaks("\n".join(events), forbidden),
        "outcome and dead-letter headers": leaks("\n".join(headers), forbidden),
        "outcome keys": leaks(str([r.key for r in published]), forbidden),
        "sandbox log": leaks(str(sandbox_logs), forbidden),
    }
    assert found == {name: [] for name in found}
    # The search does find what is there: a dead letter's value is the record as it came.
    assert leaks(str([record.value for record in dead]), forbidden) == [
        f"account {commands[2]['bank_account_number']}"
    ]
    reasons = {event["reason_code"] for event in outcomes.failed}
    assert {"VALIDATION_FAILED", "ACCOUNT_NOT_FOUND"} <= reasons, reasons
    # The trace went through: every command sent with a traceparent has its outcome in it.
    traced = [
        dict(record.headers)["traceparent"].decode()
        for record in published
        if dict(record.headers).get("traceparent", b"").startswith(f"00-{TRACE_ID}".encode())
    ]
    assert len(traced) >= len(commands) // 2
    assert len(set(traced)) == len(traced)  # a new span id for each


async def wait_for_dead_letters(settings: KafkaSettings, expected: int) -> list[Read]:
    for _ in range(60):
        dead = await read_all(settings, [settings.dead_letter_topic, settings.review_topic])
        if len(dead) >= expected:
            return dead
        await asyncio.sleep(0.5)
    raise AssertionError(f"{expected} dead letters expected, {len(dead)} found")
