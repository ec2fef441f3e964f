"""The PAS client masks the account number in whatever PAS answers before anyone reads it."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import pytest
import structlog

from pa_devkit.keys import DEV_P12_PASSWORD, DevKeySet
from service.domain.ports import PasRequest
from service.pas.client import PasClient
from service.pas.credentials import Credentials, load_credentials
from service.settings import PasSettings
from tests.conftest import CONSUMER_KEY
from tests.http_support import Recorder, streamed

ACCOUNT = "5123456789012345000"
OTHER_CARD = "4111111111111111"
REQUEST = PasRequest(ACCOUNT, 5, "GOODWILL", "reason", "agent", "corr-1")


@pytest.fixture
def credentials(dev_keyset: DevKeySet) -> Credentials:
    return load_credentials(
        PasSettings(
            consumer_key=CONSUMER_KEY,
            signing_key_path=dev_keyset.client_signing_p12,
            signing_key_password=DEV_P12_PASSWORD,
            encryption_certificate_path=dev_keyset.pas_encryption_certificate,
            decryption_key_path=dev_keyset.client_decryption_key,
        ),
        now=datetime.now(UTC),
    )


async def test_an_error_envelope_echoing_the_account_is_masked(credentials: Credentials) -> None:
    """Every text of PAS's error entries (and the reply's problem) has the account and any card
    number masked to the last four; nothing logged holds them."""
    entry = {
        "Source": f"gateway {ACCOUNT}",
        "ReasonCode": "ACCOUNT_NOT_FOUND",
        "Description": f"no account {ACCOUNT} (card {OTHER_CARD})",
        "Recoverable": False,
        "Details": f"bankAccountNumber={ACCOUNT}",
    }
    answer = httpx.Response(404, json={"Errors": {"Error": [entry]}})
    recorder = Recorder(streamed(answer))
    with structlog.testing.capture_logs() as logs:
        async with httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as http:
            client = PasClient(http, PasSettings(), credentials)
            reply = await client.adjust(REQUEST, deadline=time.monotonic() + 30)
    (error,) = reply.errors
    assert error.description == "no account ***************5000 (card ************1111)"
    assert error.source == "gateway ***************5000"
    assert error.field == "bankAccountNumber=***************5000"
    texts = f"{reply} {logs}"
    assert ACCOUNT not in texts
    assert OTHER_CARD not in texts


async def test_a_transport_error_quoting_the_account_is_masked(credentials: Credentials) -> None:
    """An exception's message that quotes the account does not carry it into the problem."""
    recorder = Recorder(httpx.ReadError(f"peer closed while sending {ACCOUNT}"))
    async with httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as http:
        client = PasClient(http, PasSettings(), credentials)
        reply = await client.adjust(REQUEST, deadline=time.monotonic() + 30)
    assert ACCOUNT not in reply.problem
    assert reply.problem.endswith("***************5000")
