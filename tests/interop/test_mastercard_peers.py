"""Our OAuth 1.0a and JWE code against Mastercard's official Python libraries as peers.

Peers: ``mastercard-oauth1-signer`` (``oauth1``) and ``mastercard-client-encryption``
(``client_encryption``). Where the peers deviate from the contract, a ``test_quirk_*`` test
pins the deviation down, so a change in a new release of the peer is noticed.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import oauth1.coreutils  # type: ignore[import-untyped]
import pytest
from client_encryption.jwe_encryption import (  # type: ignore[import-untyped]
    decrypt_payload,
    encrypt_payload,
)
from client_encryption.jwe_encryption_config import JweEncryptionConfig  # type: ignore[import-untyped]
from cryptography.hazmat.primitives.asymmetric import rsa
from oauth1.authenticationutils import load_signing_key  # type: ignore[import-untyped]
from oauth1.oauth import OAuth  # type: ignore[import-untyped]

from pa_devkit.keys import DevKeySet, generate_dev_keyset
from pa_devkit.oauth1_verifier import OAuth1Verifier
from service.security.errors import DecryptionError
from service.security.jwe import JweDecrypter, JweEncrypter
from service.security.keys import kid_for_certificate, load_certificate, load_private_key
from service.security.oauth1 import OAuth1Signer, body_hash, signature_base_string

P12_PASSWORD = "interop-pass"
CONSUMER_KEY = "Abc123-_Zz!0123456789abcdef0123456789abcdef"
NONCE = "Q1w2E3r4T5y6U7i8"
TIMESTAMP = 1_750_000_000
PAS = "https://sandbox.api.mastercard.com/loyalty"
BODY = b'{"encryptedValue":"eyJhbGciOiJSU0EtT0FFUC0yNTYifQ.a.b.c.d"}'
PAYLOAD = {
    "bankAccountNumber": "5555444433332222000",
    "pointsToAdjust": -250,
    "adjustmentTypeCode": "GOODWILL",
    "adjustmentReason": "Late delivery, customer called (ticket #8812)",
    "adjustedBy": "agent-42",
}
URLS = [
    f"{PAS}/points-adjustments",
    "https://Sandbox.API.Mastercard.com:443/loyalty/points-adjustments",
    "http://localhost:8080/loyalty/points-adjustments",
    f"{PAS}/points-adjustments-details?user_id=ab%2Bc%2F%3D&user_id_type=RANAC",
    f"{PAS}/points-adjustments-details?user_id_type=RANCU&user_id=12345",
    f"{PAS}/points-adjustments-details?q=a+b&empty=&flag",
    f"{PAS}/points-adjustments-details?b=2&a=1&a=0",
]


@pytest.fixture(scope="module")
def keyset(tmp_path_factory: pytest.TempPathFactory) -> DevKeySet:
    return generate_dev_keyset(tmp_path_factory.mktemp("interop"), p12_password=P12_PASSWORD)


@pytest.fixture(scope="module")
def signing_key(keyset: DevKeySet) -> rsa.RSAPrivateKey:
    return load_private_key(keyset.client_signing_p12, password=P12_PASSWORD)


@pytest.fixture(scope="module")
def their_config(keyset: DevKeySet) -> Any:
    """Their JWE config: encrypt to the PAS certificate, decrypt with the PAS private key."""
    return JweEncryptionConfig(
        {
            "paths": {"$": {"toEncrypt": {"$": "$"}, "toDecrypt": {"$": "$"}}},
            "encryptedValueFieldName": "encryptedValue",
            "encryptionCertificate": str(keyset.pas_encryption_certificate),
            "decryptionKey": str(keyset.pas_decryption_key),
        }
    )


def oauth_params(body: bytes) -> dict[str, str]:
    return {
        "oauth_consumer_key": CONSUMER_KEY,
        "oauth_nonce": NONCE,
        "oauth_timestamp": str(TIMESTAMP),
        "oauth_signature_method": "RSA-SHA256",
        "oauth_version": "1.0",
        "oauth_body_hash": body_hash(body),
    }


def b64u_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- OAuth 1.0a ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize(("method", "body"), [("POST", BODY), ("GET", b"")])
def test_base_string_agrees_with_official_signer(url: str, method: str, body: bytes) -> None:
    """For the same parameters our base string equals ``oauth1.OAuth.get_base_string``."""
    params = oauth_params(body)
    assert signature_base_string(method, url, body, params) == OAuth.get_base_string(
        url, method, dict(params)
    )


@pytest.mark.parametrize("url", URLS)
def test_signature_agrees_with_official_signer(url: str, signing_key: rsa.RSAPrivateKey) -> None:
    """With the same nonce and timestamp our signature equals ``OAuth.sign_message``'s."""
    ours = OAuth1Signer(
        CONSUMER_KEY, signing_key, clock=lambda: TIMESTAMP, nonce=lambda: NONCE
    ).oauth_params("POST", url, BODY)
    theirs = OAuth.sign_message(OAuth.get_base_string(url, "POST", oauth_params(BODY)), signing_key)
    assert ours["oauth_signature"] == theirs


@pytest.mark.parametrize("url", URLS)
def test_header_agrees_with_official_signer(
    url: str, keyset: DevKeySet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With their nonce and clock pinned, their whole header equals ours byte for byte."""
    monkeypatch.setattr(oauth1.coreutils, "get_nonce", lambda length=16: NONCE)
    monkeypatch.setattr(oauth1.coreutils, "get_timestamp", lambda: TIMESTAMP)
    their_key = load_signing_key(str(keyset.client_signing_p12), P12_PASSWORD)
    theirs = OAuth.get_authorization_header(url, "POST", BODY, CONSUMER_KEY, their_key)
    ours = OAuth1Signer(
        CONSUMER_KEY,
        load_private_key(keyset.client_signing_p12, password=P12_PASSWORD),
        clock=lambda: TIMESTAMP,
        nonce=lambda: NONCE,
    ).authorization_header("POST", url, BODY)
    assert ours == theirs


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize(("method", "body"), [("POST", BODY), ("GET", b"")])
def test_official_signer_header_verifies_with_our_verifier(
    url: str, method: str, body: bytes, keyset: DevKeySet
) -> None:
    """A header from the official signer (its own nonce and clock) passes ``OAuth1Verifier``."""
    their_key = load_signing_key(str(keyset.client_signing_p12), P12_PASSWORD)
    header = OAuth.get_authorization_header(url, method, body, CONSUMER_KEY, their_key)
    client_cert = load_certificate(keyset.client_signing_certificate)
    public_key = client_cert.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    verifier = OAuth1Verifier({CONSUMER_KEY: public_key}, clock=time.time)
    assert verifier.verify(method, url, {"Authorization": header}, body) == CONSUMER_KEY


def test_quirk_official_signer_sorts_joined_pairs_not_names() -> None:
    """The official Python signer sorts ``k=v`` strings, so ``a1`` lands before ``a``; we sort by
    name then value (as RFC 5849 and Mastercard's Java signer do). Only names where one is a
    prefix of the other followed by a character below ``=`` are affected; PAS URLs have none."""
    url = f"{PAS}/points-adjustments-details?a1=x&a=y"
    params = oauth_params(b"")
    ours = signature_base_string("GET", url, b"", params)
    theirs = OAuth.get_base_string(url, "GET", dict(params))
    assert ours.split("&")[2].startswith("a%3Dy%26a1%3Dx")
    assert theirs.split("&")[2].startswith("a1%3Dx%26a%3Dy")


# --- JWE -----------------------------------------------------------------------------------


def test_kid_agrees_with_official_fingerprint(keyset: DevKeySet, their_config: Any) -> None:
    """Their computed ``encryption_key_fingerprint`` is our kid for the same certificate."""
    cert = load_certificate(keyset.pas_encryption_certificate)
    assert their_config.encryption_key_fingerprint == kid_for_certificate(cert)


def test_our_jwe_decrypts_with_official_library(keyset: DevKeySet, their_config: Any) -> None:
    """A body we encrypt to the PAS certificate decrypts with ``client_encryption``."""
    encrypter = JweEncrypter(load_certificate(keyset.pas_encryption_certificate))
    body = {"encryptedValue": encrypter.encrypt(json.dumps(PAYLOAD).encode())}
    assert decrypt_payload(body, their_config) == PAYLOAD


def test_official_jwe_decrypts_with_ours(keyset: DevKeySet, their_config: Any) -> None:
    """A body the official library encrypts decrypts with ``JweDecrypter``; its IV is 16 bytes
    and its protected header is byte-identical to ours."""
    encrypted = encrypt_payload(PAYLOAD, their_config)
    compact = encrypted["encryptedValue"]
    header_b64, _, iv_b64, _, _ = compact.split(".")
    assert len(b64u_decode(iv_b64)) == 16

    cert = load_certificate(keyset.pas_encryption_certificate)
    ours = JweEncrypter(cert).encrypt(b"{}")
    assert header_b64 == ours.split(".")[0]

    decrypter = JweDecrypter(
        load_private_key(keyset.pas_decryption_key), expected_kid=kid_for_certificate(cert)
    )
    assert json.loads(decrypter.decrypt(compact)) == PAYLOAD


def test_quirk_official_library_does_not_verify_the_tag(
    keyset: DevKeySet, their_config: Any
) -> None:
    """The official library decrypts a JWE with a zeroed or missing tag; ours refuses it."""
    compact = encrypt_payload(PAYLOAD, their_config)["encryptedValue"]
    parts = compact.split(".")
    zeroed = ".".join([*parts[:4], base64.urlsafe_b64encode(bytes(16)).rstrip(b"=").decode()])
    assert decrypt_payload({"encryptedValue": zeroed}, their_config) == PAYLOAD
    assert decrypt_payload({"encryptedValue": ".".join(parts[:4])}, their_config) == PAYLOAD

    decrypter = JweDecrypter(load_private_key(keyset.pas_decryption_key), expected_kid=None)
    with pytest.raises(DecryptionError, match="tag_mismatch"):
        decrypter.decrypt(zeroed)
    with pytest.raises(DecryptionError, match="not_five_parts"):
        decrypter.decrypt(".".join(parts[:4]))
