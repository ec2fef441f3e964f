"""Every HTTP transport classifies every way a call can end the same, against the real sandbox."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from pa_devkit.keys import DEV_P12_PASSWORD, DevKeySet
from pa_devkit.localinfra.broker_config import free_port
from pa_devkit.sandbox.app import run_sandbox
from pa_devkit.sandbox.faults import FaultConfig
from service.domain.classification import Action, Transport, classify
from service.domain.ports import PasRequest
from service.pas.client import PasClient, open_http_client
from service.pas.credentials import load_credentials
from service.settings import PasSettings
from tests.conftest import CONSUMER_KEY
from tests.e2e.harness import secure_sandbox

REQUEST = PasRequest("5123456789012345000", 10, "GOODWILL", "transport test", "agent-1", "c-1")


def settings_for(keyset: DevKeySet, base_url: str, transport: str) -> PasSettings:
    return PasSettings.model_validate(
        {
            "base_url": base_url,
            "allow_plain_http": True,
            "http_transport": transport,
            "read_timeout_s": 0.5,
            "consumer_key": CONSUMER_KEY,
            "signing_key_path": keyset.client_signing_p12,
            "signing_key_password": DEV_P12_PASSWORD,
            "encryption_certificate_path": keyset.pas_encryption_certificate,
            "decryption_key_path": keyset.client_decryption_key,
        }
    )


async def call(settings: PasSettings) -> tuple[Transport | None, int | None, Action]:
    credentials = load_credentials(settings, now=datetime.now(UTC))
    async with open_http_client(settings) as http:
        client = PasClient(http, settings, credentials)
        reply = await client.adjust(REQUEST, deadline=time.monotonic() + 30)
    seen = reply.observation
    return seen.transport, seen.status, classify(seen).action


@pytest.mark.parametrize("transport", ["httpx", "aiohttp", "native"])
@pytest.mark.parametrize(
    ("faults", "expected_transport", "expected_action", "applied"),
    [
        ({}, None, Action.APPLIED, 1),
        ({"apply_then_drop": {"rate": 1.0}}, Transport.PROTOCOL, Action.UNKNOWN, 1),
        ({"reset": {"rate": 1.0}}, Transport.RESET, Action.UNKNOWN, 0),
        (
            {"hang": {"rate": 1.0, "seconds": 1.5, "applies": True}},
            Transport.READ_TIMEOUT,
            Action.UNKNOWN,
            1,
        ),
    ],
)
async def test_each_ending_is_classified_safely(
    dev_keyset: DevKeySet,
    transport: str,
    faults: dict[str, object],
    expected_transport: Transport | None,
    expected_action: Action,
    applied: int,
) -> None:
    """A connection dropped or reset after sending is never read as 'not sent'."""
    config = secure_sandbox(dev_keyset, faults=FaultConfig.from_dict(faults))
    async with run_sandbox(config) as sandbox:
        seen_transport, _, action = await call(
            settings_for(dev_keyset, sandbox.base_url, transport)
        )
        if faults.get("hang"):
            await asyncio.sleep(1.5)  # the hung request applies after the client gave up
        ledger = len(sandbox.ledger.entries())
    assert action is expected_action
    if expected_transport is Transport.PROTOCOL:
        assert seen_transport in (Transport.PROTOCOL, Transport.RESET)
    else:
        assert seen_transport is expected_transport
    assert ledger == applied


@pytest.mark.parametrize("transport", ["httpx", "aiohttp", "native"])
async def test_a_refused_connection_is_not_sent(dev_keyset: DevKeySet, transport: str) -> None:
    """Nothing listening: the call is classified as never sent, so retrying is safe."""
    port = free_port()
    seen_transport, status, action = await call(
        settings_for(dev_keyset, f"http://127.0.0.1:{port}", transport)
    )
    assert status is None
    assert seen_transport is Transport.CONNECT
    assert action is Action.RETRY
