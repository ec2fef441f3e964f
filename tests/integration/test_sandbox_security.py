"""The secured PAS sandbox (OAuth 1.0a gateway, JWE bodies) over a real socket.

The client side is our own ``service.security`` code: ``OAuth1Signer`` with
``MastercardOAuth1Auth`` signs, ``JweEncrypter`` encrypts to the PAS certificate and
``JweDecrypter`` opens the answers with the client's key.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from structlog.testing import CapturingLogger

from pa_devkit.keys import DEV_P12_PASSWORD, DevKeySet, generate_dev_keyset, generate_rsa_key
from pa_devkit.sandbox import RunningSandbox, SandboxConfig, SandboxSecurity, run_sandbox
from pa_devkit.sandbox.security import load_security_material, secured_hooks
from service.security.errors import CertificateError
from service.security.jwe import ENCRYPTED_FIELDS, JweDecrypter, JweEncrypter
from service.security.keys import kid_for_certificate, load_certificate, load_private_key
from service.security.oauth1 import MastercardOAuth1Auth, OAuth1Signer

CONSUMER_KEY = "points-adjuster-test"
PREFIX = "/loyalty"
ACCOUNT = "5555444433332222000"
PAYLOAD: dict[str, Any] = {
    "bankAccountNumber": ACCOUNT,
    "pointsToAdjust": -250,
    "adjustmentTypeCode": "GOODWILL",
    "adjustmentReason": "late delivery",
    "adjustedBy": "agent-42",
}
DECLINED = {
    "Source": "Gateway",
    "ReasonCode": "DECLINED",
    "Description": "Unauthorized - Access Not Granted",
    "Recoverable": False,
    "Details": None,
}


# --- keys and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyset(tmp_path_factory: pytest.TempPathFactory) -> DevKeySet:
    return generate_dev_keyset(tmp_path_factory.mktemp("sandbox-security-keys"))


@pytest.fixture(scope="module")
def signing_key(keyset: DevKeySet) -> rsa.RSAPrivateKey:
    return load_private_key(keyset.client_signing_p12, password=DEV_P12_PASSWORD)


@pytest.fixture(scope="module")
def pas_certificate(keyset: DevKeySet) -> x509.Certificate:
    return load_certificate(keyset.pas_encryption_certificate)


@pytest.fixture(scope="module")
def encrypter(pas_certificate: x509.Certificate) -> JweEncrypter:
    return JweEncrypter(pas_certificate)


@pytest.fixture(scope="module")
def client_decrypter(keyset: DevKeySet) -> JweDecrypter:
    certificate = load_certificate(keyset.client_decryption_certificate)
    return JweDecrypter(
        load_private_key(keyset.client_decryption_key),
        expected_kid=kid_for_certificate(certificate),
    )


@pytest.fixture
def security(keyset: DevKeySet) -> SandboxSecurity:
    return SandboxSecurity.from_keyset(keyset, CONSUMER_KEY)


@pytest.fixture
async def sandbox(security: SandboxSecurity) -> AsyncIterator[RunningSandbox]:
    async with run_sandbox(SandboxConfig(port=0, path_prefix=PREFIX, security=security)) as running:
        yield running


@pytest.fixture
def signer(signing_key: rsa.RSAPrivateKey) -> OAuth1Signer:
    return OAuth1Signer(CONSUMER_KEY, signing_key)


@pytest.fixture
async def client(sandbox: RunningSandbox, signer: OAuth1Signer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=sandbox.base_url, auth=MastercardOAuth1Auth(signer), timeout=10
    ) as http:
        yield http


@pytest.fixture
async def plain_client(sandbox: RunningSandbox) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=10) as http:
        yield http


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def encrypted_body(
    encrypter: JweEncrypter, payload: dict[str, Any] = PAYLOAD, field: str = "encryptedValue"
) -> bytes:
    return json.dumps({field: encrypter.encrypt(json.dumps(payload).encode())}).encode()


def jwe_with_iv(plaintext: bytes, certificate: x509.Certificate, iv_length: int) -> str:
    """A compact JWE built from ``cryptography`` primitives, with an IV of ``iv_length`` bytes."""
    header = {
        "alg": "RSA-OAEP-256",
        "enc": "A256GCM",
        "kid": kid_for_certificate(certificate),
        "cty": "application/json",
    }
    header_b64 = b64u(json.dumps(header, separators=(",", ":")).encode())
    cek, iv = os.urandom(32), os.urandom(iv_length)
    public_key = certificate.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    wrapped = public_key.encrypt(
        cek,
        padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )
    sealed = AESGCM(cek).encrypt(iv, plaintext, header_b64.encode("ascii"))
    return ".".join([header_b64, b64u(wrapped), b64u(iv), b64u(sealed[:-16]), b64u(sealed[-16:])])


def errors_of(response: httpx.Response) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = response.json()["Errors"]["Error"]
    return errors


async def post(
    client: httpx.AsyncClient, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await client.post(
        f"{PREFIX}/points-adjustments",
        content=body,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


# --- what gets through -----------------------------------------------------------------------


async def test_signed_encrypted_adjustment_is_applied_and_the_answer_decrypts(
    sandbox: RunningSandbox,
    client: httpx.AsyncClient,
    encrypter: JweEncrypter,
    client_decrypter: JweDecrypter,
) -> None:
    """A signed, encrypted POST is applied, and the 200 answer is a JWE for the client's key."""
    response = await post(client, encrypted_body(encrypter))

    assert response.status_code == 200
    answer = response.json()
    assert list(answer) == ["encryptedValue"]
    assert json.loads(client_decrypter.decrypt(answer["encryptedValue"])) == {
        "pointsAdjusted": -250
    }
    [entry] = sandbox.ledger.entries()
    assert (entry.bank_account_number, entry.points_adjusted) == (ACCOUNT, -250)


@pytest.mark.parametrize("field", ENCRYPTED_FIELDS)
async def test_each_encrypted_field_name_is_accepted_and_echoed(
    sandbox: RunningSandbox,
    client: httpx.AsyncClient,
    encrypter: JweEncrypter,
    client_decrypter: JweDecrypter,
    field: str,
) -> None:
    """encryptedValue, encryptedData and encryptedPayload are accepted; the answer uses the same."""
    response = await post(client, encrypted_body(encrypter, field=field))

    assert response.status_code == 200
    [(answered_field, compact)] = response.json().items()
    assert answered_field == field
    assert json.loads(client_decrypter.decrypt(compact)) == {"pointsAdjusted": -250}
    assert len(sandbox.ledger) == 1


@pytest.mark.parametrize("iv_length", [12, 16])
async def test_jwe_with_a_12_or_16_byte_iv_is_accepted(
    sandbox: RunningSandbox,
    client: httpx.AsyncClient,
    pas_certificate: x509.Certificate,
    iv_length: int,
) -> None:
    """A JWE with the RFC's 12-byte IV or Mastercard's 16-byte IV is decrypted and applied."""
    compact = jwe_with_iv(json.dumps(PAYLOAD).encode(), pas_certificate, iv_length)

    response = await post(client, json.dumps({"encryptedData": compact}).encode())

    assert response.status_code == 200
    assert len(sandbox.ledger) == 1


async def test_plain_responses_when_no_client_certificate_is_configured(
    keyset: DevKeySet, signer: OAuth1Signer, encrypter: JweEncrypter
) -> None:
    """Without a client encryption certificate the 200 answer is plain {"pointsAdjusted": n}."""
    security = SandboxSecurity.from_keyset(keyset, CONSUMER_KEY, encrypt_responses=False)
    async with (
        run_sandbox(SandboxConfig(port=0, path_prefix=PREFIX, security=security)) as running,
        httpx.AsyncClient(base_url=running.base_url, auth=MastercardOAuth1Auth(signer)) as http,
    ):
        response = await post(http, encrypted_body(encrypter))

    assert response.status_code == 200
    assert response.json() == {"pointsAdjusted": -250}


async def test_an_invalid_decrypted_payload_gets_the_field_errors(
    sandbox: RunningSandbox, client: httpx.AsyncClient, encrypter: JweEncrypter
) -> None:
    """The decrypted payload goes through the usual validation: one 400 entry per bad field."""
    response = await post(client, encrypted_body(encrypter, {**PAYLOAD, "pointsToAdjust": 0}))

    assert response.status_code == 400
    assert [(e["ReasonCode"], e["Details"]) for e in errors_of(response)] == [
        ("INVALID_POINTS", "pointsToAdjust")
    ]
    assert len(sandbox.ledger) == 0


async def test_signed_history_is_answered_in_plain_json(
    client: httpx.AsyncClient, encrypter: JweEncrypter
) -> None:
    """A signed GET of the history (empty body hash, query signed) is answered in plain JSON."""
    await post(client, encrypted_body(encrypter))

    response = await client.get(
        f"{PREFIX}/points-adjustments-details",
        params={"user_id": ACCOUNT, "user_id_type": "RANAC"},
    )

    assert response.status_code == 200
    body = response.json()
    assert body["balance"] == -250
    assert [a["pointsAdjusted"] for a in body["adjustments"]] == [-250]


async def test_the_signature_covers_the_url_exactly_as_sent(
    sandbox: RunningSandbox, client: httpx.AsyncClient
) -> None:
    """A signed GET whose path and query hold percent-escapes verifies against the raw URL."""
    url = f"{sandbox.api_base_url}/points%2Dadjustments-details?user_id=12%33&user_id_type=RANAC"

    response = await client.get(url)

    assert response.status_code == 200
    assert response.json() == {"adjustments": [], "balance": 0}


async def test_unsigned_history_is_declined(plain_client: httpx.AsyncClient) -> None:
    """A GET of the history without a signature is the gateway's 401."""
    response = await plain_client.get(
        f"{PREFIX}/points-adjustments-details",
        params={"user_id": ACCOUNT, "user_id_type": "RANAC"},
    )

    assert response.status_code == 401
    assert errors_of(response) == [DECLINED]


async def test_admin_routes_need_no_signature(
    plain_client: httpx.AsyncClient,
) -> None:
    """The /_sandbox admin routes answer without any Authorization header."""
    ledger = await plain_client.get("/_sandbox/ledger")
    faults = await plain_client.get("/_sandbox/faults")

    assert (ledger.status_code, faults.status_code) == (200, 200)


# --- the gateway's refusals ------------------------------------------------------------------


@pytest.fixture
def declines() -> CapturingLogger:
    return CapturingLogger()


@pytest.fixture
async def logged_sandbox(
    security: SandboxSecurity, declines: CapturingLogger
) -> AsyncIterator[RunningSandbox]:
    """The secured sandbox, its gateway logging refusals into ``declines``."""
    codec, gateway = secured_hooks(
        load_security_material(security), clock=time.time, logger=declines
    )
    config = SandboxConfig(port=0, path_prefix=PREFIX, security=security)
    async with run_sandbox(config, codec=codec, gateway=gateway) as running:
        yield running


def sign(
    signing_key: rsa.RSAPrivateKey,
    url: str,
    body: bytes,
    *,
    consumer_key: str = CONSUMER_KEY,
    clock: Callable[[], float] = time.time,
) -> str:
    return OAuth1Signer(consumer_key, signing_key, clock=clock).authorization_header(
        "POST", url, body
    )


RefusalCase = Callable[[str, bytes, rsa.RSAPrivateKey], tuple[bytes, dict[str, str]]]
"""(url, encrypted body, signing key) -> the body to send and the headers to send it with."""


def _tampered_body(url: str, body: bytes, key: rsa.RSAPrivateKey) -> tuple[bytes, dict[str, str]]:
    other = body.replace(b'{"encryptedValue"', b'{ "encryptedValue"')
    return other, {"Authorization": sign(key, url, body)}


def _wrong_signing_key(
    url: str, body: bytes, key: rsa.RSAPrivateKey
) -> tuple[bytes, dict[str, str]]:
    return body, {"Authorization": sign(generate_rsa_key(), url, body)}


def _unknown_consumer_key(
    url: str, body: bytes, key: rsa.RSAPrivateKey
) -> tuple[bytes, dict[str, str]]:
    return body, {"Authorization": sign(key, url, body, consumer_key="someone-else")}


def _stale_timestamp(url: str, body: bytes, key: rsa.RSAPrivateKey) -> tuple[bytes, dict[str, str]]:
    return body, {"Authorization": sign(key, url, body, clock=lambda: time.time() - 1000)}


def _future_timestamp(
    url: str, body: bytes, key: rsa.RSAPrivateKey
) -> tuple[bytes, dict[str, str]]:
    return body, {"Authorization": sign(key, url, body, clock=lambda: time.time() + 1000)}


def _missing_authorization(
    url: str, body: bytes, key: rsa.RSAPrivateKey
) -> tuple[bytes, dict[str, str]]:
    return body, {}


def _other_scheme(url: str, body: bytes, key: rsa.RSAPrivateKey) -> tuple[bytes, dict[str, str]]:
    return body, {"Authorization": "Bearer abc"}


def _signed_for_another_url(
    url: str, body: bytes, key: rsa.RSAPrivateKey
) -> tuple[bytes, dict[str, str]]:
    elsewhere = url.replace("127.0.0.1", "localhost")
    return body, {"Authorization": sign(key, elsewhere, body)}


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        (_tampered_body, "body_hash_mismatch"),
        (_wrong_signing_key, "bad_signature"),
        (_unknown_consumer_key, "unknown_consumer_key"),
        (_stale_timestamp, "stale_timestamp"),
        (_future_timestamp, "future_timestamp"),
        (_missing_authorization, "missing_header"),
        (_other_scheme, "malformed_header"),
        (_signed_for_another_url, "bad_signature"),
    ],
    ids=[
        "tampered-body",
        "wrong-signing-key",
        "unknown-consumer-key",
        "stale-timestamp",
        "future-timestamp",
        "missing-authorization",
        "other-scheme",
        "signed-for-another-url",
    ],
)
async def test_gateway_declines_with_401_and_logs_the_cause(
    logged_sandbox: RunningSandbox,
    declines: CapturingLogger,
    encrypter: JweEncrypter,
    signing_key: rsa.RSAPrivateKey,
    case: RefusalCase,
    reason: str,
) -> None:
    """Each OAuth failure is the bare gateway 401; the precise cause is only in the log."""
    url = logged_sandbox.adjustments_url
    body, headers = case(url, encrypted_body(encrypter), signing_key)

    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(url, content=body, headers=headers)

    assert response.status_code == 401
    assert errors_of(response) == [DECLINED]
    assert reason not in response.text
    assert [(c.args, c.kwargs["reason"]) for c in declines.calls] == [
        (("sandbox.gateway.declined",), reason)
    ]
    assert len(logged_sandbox.ledger) == 0


async def test_the_skew_window_is_configurable(
    keyset: DevKeySet, encrypter: JweEncrypter, signing_key: rsa.RSAPrivateKey
) -> None:
    """With max_skew_seconds=2000 a signature 1000 s old is accepted; at 300 it is not."""
    wide = dataclasses.replace(
        SandboxSecurity.from_keyset(keyset, CONSUMER_KEY), max_skew_seconds=2000
    )
    async with (
        run_sandbox(SandboxConfig(port=0, security=wide)) as running,
        httpx.AsyncClient(timeout=10) as http,
    ):
        body = encrypted_body(encrypter)
        old = sign(signing_key, running.adjustments_url, body, clock=lambda: time.time() - 1000)
        response = await http.post(
            running.adjustments_url, content=body, headers={"Authorization": old}
        )

    assert response.status_code == 200


async def test_replayed_nonce_is_declined(
    logged_sandbox: RunningSandbox,
    declines: CapturingLogger,
    encrypter: JweEncrypter,
    signing_key: rsa.RSAPrivateKey,
) -> None:
    """The exact same signed request sent twice is applied once; the replay gets the 401."""
    url = logged_sandbox.adjustments_url
    body = encrypted_body(encrypter)
    headers = {"Authorization": sign(signing_key, url, body)}

    async with httpx.AsyncClient(timeout=10) as http:
        first = await http.post(url, content=body, headers=headers)
        replay = await http.post(url, content=body, headers=headers)

    assert first.status_code == 200
    assert replay.status_code == 401
    assert errors_of(replay) == [DECLINED]
    assert [c.kwargs["reason"] for c in declines.calls] == ["replayed_nonce"]
    assert len(logged_sandbox.ledger) == 1


async def test_a_declined_call_still_carries_the_correlation_id(
    plain_client: httpx.AsyncClient, encrypter: JweEncrypter
) -> None:
    """The gateway's 401 echoes the caller's Correlation-Id like every other answer."""
    response = await post(
        plain_client, encrypted_body(encrypter), headers={"Correlation-Id": "cmd-401"}
    )

    assert response.status_code == 401
    assert response.headers["x-mc-correlation-id"] == "cmd-401"


# --- the codec's refusals --------------------------------------------------------------------


def _zero_tag(compact: str) -> str:
    parts = compact.split(".")
    return ".".join([*parts[:4], b64u(bytes(16))])


async def test_jwe_for_another_key_is_invalid_kid(
    sandbox: RunningSandbox, client: httpx.AsyncClient, keyset: DevKeySet
) -> None:
    """A JWE encrypted to another certificate than PAS's is refused 400 INVALID_KID."""
    other = JweEncrypter(load_certificate(keyset.client_decryption_certificate))

    response = await post(client, encrypted_body(other))

    assert response.status_code == 400
    [error] = errors_of(response)
    assert (error["Source"], error["ReasonCode"], error["Recoverable"]) == (
        "rewards-points-api",
        "INVALID_KID",
        False,
    )
    assert len(sandbox.ledger) == 0


@pytest.mark.parametrize(
    ("mangle", "reason_code"),
    [
        (_zero_tag, "DECRYPTION_FAILED"),
        (lambda compact: compact[: len(compact) // 2], "INVALID_ENCRYPTED_PAYLOAD"),
        (lambda compact: compact.rsplit(".", 1)[0], "INVALID_ENCRYPTED_PAYLOAD"),
        (lambda compact: compact.replace(".", ".!", 1), "INVALID_ENCRYPTED_PAYLOAD"),
    ],
    ids=["zeroed-tag", "truncated-in-half", "tag-segment-missing", "bad-base64"],
)
async def test_a_broken_jwe_is_refused_with_400(
    sandbox: RunningSandbox,
    client: httpx.AsyncClient,
    encrypter: JweEncrypter,
    mangle: Callable[[str], str],
    reason_code: str,
) -> None:
    """A JWE with a zeroed GCM tag, cut short or not base64url is refused and never applied."""
    compact = mangle(encrypter.encrypt(json.dumps(PAYLOAD).encode()))

    response = await post(client, json.dumps({"encryptedValue": compact}).encode())

    assert response.status_code == 400
    [error] = errors_of(response)
    assert (error["Source"], error["ReasonCode"]) == ("rewards-points-api", reason_code)
    assert len(sandbox.ledger) == 0


@pytest.mark.parametrize(
    ("body", "reason_code"),
    [
        (json.dumps(PAYLOAD).encode(), "ENCRYPTION_REQUIRED"),
        (b'{"encryptedValue": 42}', "INVALID_ENCRYPTED_PAYLOAD"),
        (
            b'{"encryptedValue": "a.b.c.d.e", "encryptedData": "a.b.c.d.e"}',
            "INVALID_ENCRYPTED_PAYLOAD",
        ),
        (b'{"encryptedValue": "a.b.c.d.e", "pointsToAdjust": 5}', "INVALID_ENCRYPTED_PAYLOAD"),
        (b"not json", "INVALID_JSON"),
    ],
    ids=["plain-body", "not-a-string", "two-fields", "extra-field", "not-json"],
)
async def test_a_body_that_is_not_one_encrypted_field_is_refused(
    sandbox: RunningSandbox, client: httpx.AsyncClient, body: bytes, reason_code: str
) -> None:
    """With security on, a plain or malformed envelope body is a 400 with its reason code."""
    response = await post(client, body)

    assert response.status_code == 400
    assert [e["ReasonCode"] for e in errors_of(response)] == [reason_code]
    assert len(sandbox.ledger) == 0


async def test_a_jwe_whose_plaintext_is_not_json_is_invalid_json(
    client: httpx.AsyncClient, encrypter: JweEncrypter
) -> None:
    """A JWE that decrypts to something other than one JSON object is 400 INVALID_JSON."""
    body = json.dumps({"encryptedValue": encrypter.encrypt(b"[1, 2]")}).encode()

    response = await post(client, body)

    assert response.status_code == 400
    assert [e["ReasonCode"] for e in errors_of(response)] == ["INVALID_JSON"]


# --- start-up --------------------------------------------------------------------------------


async def test_a_pas_key_that_does_not_match_its_certificate_fails_at_start_up(
    keyset: DevKeySet,
) -> None:
    """A key set whose PAS key is not the certificate's refuses to start, naming the mismatch."""
    security = SandboxSecurity(
        clients={CONSUMER_KEY: keyset.client_signing_certificate},
        pas_decryption_key=keyset.client_decryption_key,
        pas_encryption_certificate=keyset.pas_encryption_certificate,
    )
    with pytest.raises(CertificateError, match="key_mismatch"):
        async with run_sandbox(SandboxConfig(port=0, security=security)):
            pass


def test_from_keyset_registers_the_consumer_and_the_right_files(keyset: DevKeySet) -> None:
    """SandboxSecurity.from_keyset maps the key set's files onto the sandbox's roles."""
    security = SandboxSecurity.from_keyset(keyset, "ck")
    plain = SandboxSecurity.from_keyset(keyset, "ck", encrypt_responses=False)

    assert dict(security.clients) == {"ck": keyset.client_signing_certificate}
    assert security.pas_decryption_key == keyset.pas_decryption_key
    assert security.pas_encryption_certificate == keyset.pas_encryption_certificate
    assert security.client_encryption_certificate == keyset.client_decryption_certificate
    assert plain.client_encryption_certificate is None
    assert security.max_skew_seconds == 300
