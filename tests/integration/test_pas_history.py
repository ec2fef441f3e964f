"""PasHistoryClient against the secured sandbox over a real socket (OAuth1 gateway, JWE).

Adjustments go in through the production path (``PasClient``: JWE-encrypted, then
OAuth1-signed, credentials from ``load_credentials``); the history comes back through
``PasHistoryClient.lookup``, signed the same way.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from pa_devkit.keys import DEV_P12_PASSWORD, DevKeySet
from pa_devkit.localinfra.broker_config import free_port
from pa_devkit.sandbox import RunningSandbox, SandboxConfig, SandboxSecurity, run_sandbox
from service.domain.ports import PasRequest
from service.domain.reconcile import (
    HistoryFailed,
    HistoryFound,
    ReconcileFound,
    find_applied,
    judge,
    reason_with_reference,
    reference_for,
)
from service.pas.client import PasClient
from service.pas.credentials import Credentials, load_credentials
from service.pas.history import PasHistoryClient
from service.settings import PasSettings
from tests.conftest import CONSUMER_KEY

PREFIX = "/loyalty"
ACCOUNT = "5123456789012345000"
UNKNOWN_ACCOUNT = "5999999999999999000"


def pas_settings(keyset: DevKeySet, base_url: str, consumer_key: str = CONSUMER_KEY) -> PasSettings:
    return PasSettings(
        base_url=base_url,
        allow_plain_http=True,
        consumer_key=consumer_key,
        signing_key_path=keyset.client_signing_p12,
        signing_key_password=DEV_P12_PASSWORD,
        encryption_certificate_path=keyset.pas_encryption_certificate,
        decryption_key_path=keyset.client_decryption_key,
    )


def credentials_for(settings: PasSettings) -> Credentials:
    return load_credentials(settings, now=datetime.now(UTC))


@pytest.fixture
async def sandbox(dev_keyset: DevKeySet) -> AsyncIterator[RunningSandbox]:
    config = SandboxConfig(
        port=0,
        path_prefix=PREFIX,
        security=SandboxSecurity.from_keyset(dev_keyset, CONSUMER_KEY),
        unknown_accounts=frozenset({UNKNOWN_ACCOUNT}),
    )
    async with run_sandbox(config) as running:
        yield running


@pytest.fixture
def settings(sandbox: RunningSandbox, dev_keyset: DevKeySet) -> PasSettings:
    return pas_settings(dev_keyset, sandbox.api_base_url)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


@pytest.fixture
def history(http: httpx.AsyncClient, settings: PasSettings) -> PasHistoryClient:
    return PasHistoryClient(http, settings, credentials_for(settings))


async def apply(
    http: httpx.AsyncClient, settings: PasSettings, key: str, points: int, reason: str
) -> str:
    """Apply one adjustment through the real client; return the reason as sent."""
    sent_reason = reason_with_reference(reason, reference_for(key))
    request = PasRequest(
        bank_account_number=ACCOUNT,
        points_to_adjust=points,
        adjustment_type_code="GOODWILL",
        adjustment_reason=sent_reason,
        adjusted_by="agent-0042",
        correlation_id=f"corr-{key}",
    )
    client = PasClient(http, settings, credentials_for(settings))
    reply = await client.adjust(request, deadline=time.monotonic() + 30)
    assert reply.points_adjusted == points, reply
    return sent_reason


async def test_lookup_lists_both_applied_adjustments_with_their_reasons(
    sandbox: RunningSandbox,
    http: httpx.AsyncClient,
    settings: PasSettings,
    history: PasHistoryClient,
) -> None:
    """Two adjustments applied signed and encrypted come back, oldest first, with their reasons."""
    first = await apply(http, settings, "key-1", 250, "late delivery")
    second = await apply(http, settings, "key-2", -40, "correction of a double credit")

    result = await history.lookup(ACCOUNT)

    assert isinstance(result, HistoryFound)
    assert [(e.points_adjusted, e.adjustment_reason) for e in result.entries] == [
        (250, first),
        (-40, second),
    ]
    assert len({e.adjustment_id for e in result.entries}) == 2
    assert all(e.adjusted_at.endswith("Z") for e in result.entries)
    assert [e.adjustment_id for e in result.entries] == [
        e.adjustment_id for e in sandbox.ledger.history(ACCOUNT)
    ]


async def test_the_reference_sent_is_found_in_the_history(
    http: httpx.AsyncClient, settings: PasSettings, history: PasHistoryClient
) -> None:
    """The reference appended to the reason identifies the applied request, another key's not."""
    await apply(http, settings, "key-1", 250, "late delivery")

    result = await history.lookup(ACCOUNT, correlation_id="reconcile-1")

    assert isinstance(result, HistoryFound)
    found = find_applied(result.entries, reference_for("key-1"))
    assert found is not None
    assert found.points_adjusted == 250
    assert find_applied(result.entries, reference_for("key-never-sent")) is None
    verdict = judge(result, reference_for("key-1"), elapsed_since_last_attempt_s=0.0, settle_s=30.0)
    assert verdict == ReconcileFound(found)


async def test_an_account_without_history_gives_an_empty_list(
    history: PasHistoryClient,
) -> None:
    """An account nothing was applied to has an empty history, not a failure."""
    assert await history.lookup("4000000000000002000") == HistoryFound([])


async def test_an_unknown_account_is_a_404_failure(history: PasHistoryClient) -> None:
    """PAS's 404 ACCOUNT_NOT_FOUND comes back as HistoryFailed with status 404."""
    result = await history.lookup(UNKNOWN_ACCOUNT)

    assert isinstance(result, HistoryFailed)
    assert result.status == 404
    assert "ACCOUNT_NOT_FOUND" in result.problem
    assert UNKNOWN_ACCOUNT not in result.problem


async def test_a_signature_the_gateway_refuses_is_a_401_failure(
    sandbox: RunningSandbox, http: httpx.AsyncClient, dev_keyset: DevKeySet
) -> None:
    """Signed under a consumer key the gateway does not know, the lookup is HistoryFailed 401."""
    wrong = pas_settings(dev_keyset, sandbox.api_base_url, consumer_key="someone-else")
    client = PasHistoryClient(http, wrong, credentials_for(wrong))

    result = await client.lookup(ACCOUNT)

    assert isinstance(result, HistoryFailed)
    assert result.status == 401
    assert "DECLINED" in result.problem


async def test_a_sandbox_that_is_not_listening_is_a_failure_without_status(
    http: httpx.AsyncClient, dev_keyset: DevKeySet
) -> None:
    """Connection refused is HistoryFailed with no status, never an exception."""
    settings = pas_settings(dev_keyset, f"http://127.0.0.1:{free_port()}{PREFIX}")
    client = PasHistoryClient(http, settings, credentials_for(settings))

    result = await client.lookup(ACCOUNT)

    assert isinstance(result, HistoryFailed)
    assert result.status is None
    assert "ConnectError" in result.problem
    assert ACCOUNT not in result.problem
