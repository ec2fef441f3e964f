"""Our OAuth 1.0a and JWE code against Mastercard's official Python libraries as peers.

Peers: ``mastercard-oauth1-signer`` (``oauth1``) and ``mastercard-client-encryption``
(``client_encryption``). Where the peers deviate from the contract, a ``test_quirk_*`` test
pins the deviation down, so a change in a new release of the peer is noticed.

RSA-PSS: the signer offers it from 1.9 (``oauth1.oauth.SignatureMethod.RSA_PSS_SHA256``,
``"RSA-PSS"``). It ships no verifier, and a PSS signature is randomized (its salt), so our
PSS signatures cannot be compared with theirs byte for byte: they are checked against the
padding the official signer itself hands to ``cryptography`` (captured from its
``sign_message``), over the base string it builds; theirs go through our verifier.
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
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from oauth1.authenticationutils import load_signing_key  # type: ignore[import-untyped]
from oauth1.oauth import OAuth, SignatureMethod  # type: ignore[import-untyped]
from oauth1.version import __version__ as oauth1_version  # type: ignore[import-untyped]

from pa_devkit.keys import DevKeySet, generate_dev_keyset
from pa_devkit.oauth1_verifier import OAuth1Verifier, parse_authorization_header
from service.security.errors import DecryptionError
from service.security.jwe import JweDecrypter, JweEncrypter
from service.security.keys import kid_for_certificate, load_certificate, load_private_key
from service.security.oauth1 import (
    OAuth1Signer,
    body_hash,
    signature_base_string,
    signature_padding,
)

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


THEIRS = {"RSA-SHA256": SignatureMethod.RSA_SHA256, "RSA-PSS": SignatureMethod.RSA_PSS_SHA256}
"""Our name of each signature method -> the official signer's enum member."""


def oauth_params(body: bytes, method: str = "RSA-SHA256") -> dict[str, str]:
    return {
        "oauth_consumer_key": CONSUMER_KEY,
        "oauth_nonce": NONCE,
        "oauth_timestamp": str(TIMESTAMP),
        "oauth_signature_method": method,
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


@pytest.mark.parametrize("signing", ["RSA-SHA256", "RSA-PSS"])
@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize(("method", "body"), [("POST", BODY), ("GET", b"")])
def test_official_signer_header_verifies_with_our_verifier(
    url: str, method: str, body: bytes, keyset: DevKeySet, signing: str
) -> None:
    """A header from the official signer (its own nonce and clock), with either signature
    method, passes ``OAuth1Verifier``."""
    their_key = load_signing_key(str(keyset.client_signing_p12), P12_PASSWORD)
    header = OAuth.get_authorization_header(
        url, method, body, CONSUMER_KEY, their_key, signature_method=THEIRS[signing]
    )
    assert f'oauth_signature_method="{signing}"' in header
    client_cert = load_certificate(keyset.client_signing_certificate)
    public_key = client_cert.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    verifier = OAuth1Verifier({CONSUMER_KEY: public_key}, clock=time.time)
    assert verifier.verify(method, url, {"Authorization": header}, body) == CONSUMER_KEY


# --- RSA-PSS -------------------------------------------------------------------------------


class RecordingKey:
    """Wraps a private key: records what the official signer passes to ``sign``."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self.key = key
        self.calls: list[tuple[bytes, Any, Any]] = []

    def sign(self, data: bytes, pad: Any, algorithm: Any) -> bytes:
        self.calls.append((data, pad, algorithm))
        return self.key.sign(data, pad, algorithm)


def test_the_official_signer_here_offers_rsa_pss() -> None:
    """The installed mastercard-oauth1-signer (1.9 or later) has RSA-PSS, named as we send it."""
    major, minor = (int(part) for part in oauth1_version.split(".")[:2])
    assert (major, minor) >= (1, 9)
    assert SignatureMethod.RSA_PSS_SHA256.value == "RSA-PSS"
    assert {member.value for member in SignatureMethod} == set(THEIRS)


def test_official_pss_padding_is_what_we_sign_and_verify_with(
    signing_key: rsa.RSAPrivateKey,
) -> None:
    """The official signer signs RSA-PSS with MGF1-SHA-256 and a 32-byte salt, hashing with
    SHA-256: the padding ``signature_padding("RSA-PSS")`` gives our signer and verifier."""
    recording = RecordingKey(signing_key)
    OAuth.sign_message("base", recording, signature_method=SignatureMethod.RSA_PSS_SHA256)
    [(data, pad, algorithm)] = recording.calls
    ours = signature_padding("RSA-PSS")
    assert data == b"base"
    assert isinstance(algorithm, hashes.SHA256)
    assert isinstance(pad, padding.PSS)
    assert isinstance(ours, padding.PSS)
    assert pad._salt_length == ours._salt_length == 32
    assert isinstance(pad.mgf, padding.MGF1)
    assert isinstance(ours.mgf, padding.MGF1)
    assert isinstance(pad.mgf._algorithm, hashes.SHA256)
    assert isinstance(ours.mgf._algorithm, hashes.SHA256)


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize(("method", "body"), [("POST", BODY), ("GET", b"")])
def test_pss_base_string_agrees_with_official_signer(url: str, method: str, body: bytes) -> None:
    """With oauth_signature_method RSA-PSS our base string equals the official signer's."""
    params = oauth_params(body, "RSA-PSS")
    assert signature_base_string(method, url, body, params) == OAuth.get_base_string(
        url, method, dict(params)
    )


@pytest.mark.parametrize("url", URLS)
def test_our_pss_header_matches_theirs_and_both_signatures_verify_their_way(
    url: str, keyset: DevKeySet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With their nonce and clock pinned, our RSA-PSS header equals theirs but for the
    signature (PSS is randomized); each signature verifies over their base string with the
    padding their signer uses, and ours also passes our verifier."""
    monkeypatch.setattr(oauth1.coreutils, "get_nonce", lambda length=16: NONCE)
    monkeypatch.setattr(oauth1.coreutils, "get_timestamp", lambda: TIMESTAMP)
    their_key = load_signing_key(str(keyset.client_signing_p12), P12_PASSWORD)
    recording = RecordingKey(their_key)
    theirs = OAuth.get_authorization_header(
        url, "POST", BODY, CONSUMER_KEY, recording, signature_method=SignatureMethod.RSA_PSS_SHA256
    )
    [(their_base, their_padding, _)] = recording.calls
    ours = OAuth1Signer(
        CONSUMER_KEY,
        load_private_key(keyset.client_signing_p12, password=P12_PASSWORD),
        signature_method="RSA-PSS",
        clock=lambda: TIMESTAMP,
        nonce=lambda: NONCE,
    ).authorization_header("POST", url, BODY)

    def without_signature(header: str) -> list[str]:
        return [part for part in header.split(",") if not part.startswith("oauth_signature=")]

    assert without_signature(ours) == without_signature(theirs)
    public_key = their_key.public_key()
    for header in (ours, theirs):
        signature = base64.b64decode(parse_authorization_header(header)["oauth_signature"])
        public_key.verify(signature, their_base, their_padding, hashes.SHA256())
    verifier = OAuth1Verifier({CONSUMER_KEY: public_key}, clock=lambda: TIMESTAMP)
    assert verifier.verify("POST", url, {"Authorization": ours}, BODY) == CONSUMER_KEY


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
