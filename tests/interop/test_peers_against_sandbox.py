"""Mastercard's official client libraries, as peers, against our secured sandbox over HTTP.

``mastercard-oauth1-signer`` (``oauth1``) signs and ``mastercard-client-encryption``
(``client_encryption``) encrypts, exactly as a Mastercard customer's client would; the
sandbox must accept what they send, and their library must decrypt what the sandbox answers.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from client_encryption.jwe_encryption import (  # type: ignore[import-untyped]
    decrypt_payload,
    encrypt_payload,
)
from client_encryption.jwe_encryption_config import JweEncryptionConfig  # type: ignore[import-untyped]
from oauth1.authenticationutils import load_signing_key  # type: ignore[import-untyped]
from oauth1.oauth import OAuth, SignatureMethod  # type: ignore[import-untyped]

from pa_devkit.keys import DevKeySet, generate_dev_keyset
from pa_devkit.sandbox import (
    RunningSandbox,
    SandboxConfig,
    SandboxSecurity,
    SandboxTls,
    run_sandbox,
)
from pa_devkit.tls import generate_dev_tls
from service.security.jwe import ENCRYPTED_FIELDS
from service.security.oauth1 import SignatureMethod as OurSignatureMethod

P12_PASSWORD = "peer-pass"
CONSUMER_KEY = "Abc123-_Zz!0123456789abcdef0123456789abcdef"
PREFIX = "/loyalty"
ACCOUNT = "5555444433332222000"
PAYLOAD = {
    "bankAccountNumber": ACCOUNT,
    "pointsToAdjust": 750,
    "adjustmentTypeCode": "PROMO",
    "adjustmentReason": "spring promotion, été",
    "adjustedBy": "batch-7",
}


@pytest.fixture(scope="module")
def keyset(tmp_path_factory: pytest.TempPathFactory) -> DevKeySet:
    return generate_dev_keyset(tmp_path_factory.mktemp("peer-keys"), p12_password=P12_PASSWORD)


@pytest.fixture(scope="module")
def their_signing_key(keyset: DevKeySet) -> Any:
    return load_signing_key(str(keyset.client_signing_p12), P12_PASSWORD)


def their_client_config(keyset: DevKeySet, field: str) -> Any:
    """A client's JWE config: encrypt to PAS, decrypt answers with the client's own key."""
    return JweEncryptionConfig(
        {
            "paths": {"$": {"toEncrypt": {"$": "$"}, "toDecrypt": {"$": "$"}}},
            "encryptedValueFieldName": field,
            "encryptionCertificate": str(keyset.pas_encryption_certificate),
            "decryptionKey": str(keyset.client_decryption_key),
        }
    )


@pytest.fixture
async def sandbox(keyset: DevKeySet) -> AsyncIterator[RunningSandbox]:
    security = SandboxSecurity.from_keyset(keyset, CONSUMER_KEY)
    async with run_sandbox(SandboxConfig(port=0, path_prefix=PREFIX, security=security)) as running:
        yield running


@pytest.mark.parametrize("field", ENCRYPTED_FIELDS)
async def test_official_client_request_is_applied_and_our_answer_decrypts_with_their_library(
    sandbox: RunningSandbox, keyset: DevKeySet, their_signing_key: Any, field: str
) -> None:
    """A body encrypted and signed by the official libraries is applied (200), and their
    library decrypts the sandbox's encrypted answer in the same field."""
    config = their_client_config(keyset, field)
    body = json.dumps(encrypt_payload(PAYLOAD, config)).encode()
    url = sandbox.adjustments_url
    authorization = OAuth.get_authorization_header(
        url, "POST", body, CONSUMER_KEY, their_signing_key
    )

    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            url,
            content=body,
            headers={"Authorization": authorization, "Content-Type": "application/json"},
        )

    assert response.status_code == 200
    answer = response.json()
    assert list(answer) == [field]
    assert decrypt_payload(answer, config) == {"pointsAdjusted": 750}
    [entry] = sandbox.ledger.entries()
    assert (entry.bank_account_number, entry.points_adjusted, entry.adjustment_reason) == (
        ACCOUNT,
        750,
        "spring promotion, été",
    )


async def test_official_signer_get_of_the_history_is_accepted(
    sandbox: RunningSandbox, keyset: DevKeySet, their_signing_key: Any
) -> None:
    """A history GET signed by the official signer (query in the base string) is answered."""
    config = their_client_config(keyset, "encryptedValue")
    body = json.dumps(encrypt_payload(PAYLOAD, config)).encode()
    post_auth = OAuth.get_authorization_header(
        sandbox.adjustments_url, "POST", body, CONSUMER_KEY, their_signing_key
    )
    url = f"{sandbox.history_url}?user_id_type=RANAC&user_id={ACCOUNT}"
    get_auth = OAuth.get_authorization_header(url, "GET", None, CONSUMER_KEY, their_signing_key)

    async with httpx.AsyncClient(timeout=10) as http:
        posted = await http.post(
            sandbox.adjustments_url, content=body, headers={"Authorization": post_auth}
        )
        response = await http.get(url, headers={"Authorization": get_auth})

    assert posted.status_code == 200
    assert response.status_code == 200
    assert response.json()["balance"] == 750


async def test_official_library_jwe_with_a_zeroed_tag_is_refused(
    sandbox: RunningSandbox, keyset: DevKeySet, their_signing_key: Any
) -> None:
    """The sandbox verifies the GCM tag the official library skips: a zeroed tag is a 400."""
    config = their_client_config(keyset, "encryptedValue")
    compact = encrypt_payload(PAYLOAD, config)["encryptedValue"]
    zeroed = ".".join([*compact.split(".")[:4], "A" * 22])
    body = json.dumps({"encryptedValue": zeroed}).encode()
    authorization = OAuth.get_authorization_header(
        sandbox.adjustments_url, "POST", body, CONSUMER_KEY, their_signing_key
    )

    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            sandbox.adjustments_url, content=body, headers={"Authorization": authorization}
        )

    assert response.status_code == 400
    assert response.json()["Errors"]["Error"][0]["ReasonCode"] == "DECRYPTION_FAILED"
    assert len(sandbox.ledger) == 0


THEIR_METHODS = {
    "RSA-SHA256": SignatureMethod.RSA_SHA256,
    "RSA-PSS": SignatureMethod.RSA_PSS_SHA256,
}


@pytest.mark.parametrize("required", ["RSA-SHA256", "RSA-PSS"])
async def test_a_sandbox_requiring_one_method_takes_the_official_signer_in_it_alone(
    keyset: DevKeySet,
    their_signing_key: Any,
    tmp_path_factory: pytest.TempPathFactory,
    required: OurSignatureMethod,
) -> None:
    """A sandbox over https that requires one signature method applies an adjustment the
    official libraries encrypt and sign with that method, and answers the other with the
    gateway's 401 DECLINED, applying nothing."""
    tls = generate_dev_tls(tmp_path_factory.mktemp("peer-tls"))
    security = SandboxSecurity.from_keyset(keyset, CONSUMER_KEY, signature_methods=[required])
    config = SandboxConfig(
        port=0,
        path_prefix=PREFIX,
        security=security,
        tls=SandboxTls(tls.server_certificate, tls.server_key),
    )
    statuses: dict[str, int] = {}
    async with run_sandbox(config) as sandbox:
        url = sandbox.adjustments_url
        assert url.startswith("https://")
        verify = ssl.create_default_context(cafile=tls.ca_certificate)
        async with httpx.AsyncClient(timeout=10, verify=verify) as http:
            for name, method in THEIR_METHODS.items():
                config_ = their_client_config(keyset, "encryptedValue")
                body = json.dumps(encrypt_payload(PAYLOAD, config_)).encode()
                authorization = OAuth.get_authorization_header(
                    url, "POST", body, CONSUMER_KEY, their_signing_key, signature_method=method
                )
                response = await http.post(
                    url, content=body, headers={"Authorization": authorization}
                )
                statuses[name] = response.status_code
                if response.status_code == 401:
                    error = response.json()["Errors"]["Error"][0]
                    assert (error["Source"], error["ReasonCode"]) == ("Gateway", "DECLINED")
        applied = len(sandbox.ledger)
    other = next(name for name in THEIR_METHODS if name != required)
    assert statuses == {required: 200, other: 401}
    assert applied == 1
