"""JWE encryption and strict decryption (RSA-OAEP-256 + A256GCM)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from jwcrypto import jwe as jwcrypto_jwe
from jwcrypto import jwk as jwcrypto_jwk

from pa_devkit.keys import generate_rsa_key, make_self_signed_certificate
from service.security.errors import DecryptionError
from service.security.jwe import (
    JweDecrypter,
    JweEncrypter,
    unwrap_payload,
    wrap_payload,
)
from service.security.keys import kid_for_certificate

PLAINTEXT = b'{"bankAccountNumber":"5555444433332222000","pointsToAdjust":-250}'
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def pas_key() -> rsa.RSAPrivateKey:
    return generate_rsa_key()


@pytest.fixture(scope="module")
def pas_cert(pas_key: rsa.RSAPrivateKey) -> x509.Certificate:
    return make_self_signed_certificate(
        pas_key, "pas", not_before=NOW, not_after=NOW + dt.timedelta(days=1), usage="encryption"
    )


@pytest.fixture(scope="module")
def kid(pas_cert: x509.Certificate) -> str:
    return kid_for_certificate(pas_cert)


@pytest.fixture
def encrypter(pas_cert: x509.Certificate) -> JweEncrypter:
    return JweEncrypter(pas_cert)


@pytest.fixture
def decrypter(pas_key: rsa.RSAPrivateKey, kid: str) -> JweDecrypter:
    return JweDecrypter(pas_key, expected_kid=kid)


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hand_made_jwe(
    public_key: rsa.RSAPublicKey, header: dict[str, str], plaintext: bytes, iv_length: int
) -> str:
    """A compact JWE built straight from RFC 7516, independent of the code under test."""
    header_b64 = b64u(json.dumps(header).encode())
    cek = os.urandom(32)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    iv = os.urandom(iv_length)
    sealed = AESGCM(cek).encrypt(iv, plaintext, header_b64.encode())
    return ".".join(
        [
            header_b64,
            b64u(public_key.encrypt(cek, oaep)),
            b64u(iv),
            b64u(sealed[:-16]),
            b64u(sealed[-16:]),
        ]
    )


def with_part(compact: str, index: int, value: str) -> str:
    parts = compact.split(".")
    parts[index] = value
    return ".".join(parts)


def reason_of(decrypter: JweDecrypter, compact: str) -> str:
    with pytest.raises(DecryptionError) as info:
        decrypter.decrypt(compact)
    return info.value.reason


def test_round_trip(encrypter: JweEncrypter, decrypter: JweDecrypter) -> None:
    """What the encrypter produces, the decrypter turns back into the same bytes."""
    assert decrypter.decrypt(encrypter.encrypt(PLAINTEXT)) == PLAINTEXT
    assert decrypter.decrypt(encrypter.encrypt(b"")) == b""


def test_an_independent_library_reads_our_tokens(
    encrypter: JweEncrypter, pas_key: rsa.RSAPrivateKey
) -> None:
    """jwcrypto, holding PAS's private key, decrypts what we encrypt and checks its tag."""
    token = jwcrypto_jwe.JWE()
    token.deserialize(encrypter.encrypt(PLAINTEXT), key=jwcrypto_jwk.JWK.from_pyca(pas_key))
    assert token.payload == PLAINTEXT
    tampered = with_part(encrypter.encrypt(PLAINTEXT), 4, b64u(bytes(16)))
    with pytest.raises(jwcrypto_jwe.InvalidJWEData):
        jwcrypto_jwe.JWE().deserialize(tampered, key=jwcrypto_jwk.JWK.from_pyca(pas_key))


def test_we_read_an_independent_librarys_tokens(
    pas_cert: x509.Certificate, decrypter: JweDecrypter, kid: str
) -> None:
    """What jwcrypto encrypts to PAS's certificate, our decrypter opens."""
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": kid, "cty": "application/json"}
    token = jwcrypto_jwe.JWE(PLAINTEXT, protected=json.dumps(header))
    token.add_recipient(jwcrypto_jwk.JWK.from_pyca(pas_cert.public_key()))
    assert decrypter.decrypt(token.serialize(compact=True)) == PLAINTEXT


def test_protected_header_is_exact(encrypter: JweEncrypter, kid: str) -> None:
    """The protected header is exactly alg, enc, kid, cty in that order, compact JSON."""
    header = unb64u(encrypter.encrypt(PLAINTEXT).split(".")[0])
    expected = f'{{"alg":"RSA-OAEP-256","enc":"A256GCM","kid":"{kid}","cty":"application/json"}}'
    assert header == expected.encode()
    assert encrypter.kid == kid


def test_each_call_uses_a_fresh_content_key_and_iv(encrypter: JweEncrypter) -> None:
    """Two encryptions of the same plaintext share neither wrapped key, IV nor ciphertext."""
    first, second = (encrypter.encrypt(PLAINTEXT).split(".") for _ in range(2))
    assert first[0] == second[0]
    assert first[1] != second[1]
    assert first[2] != second[2]
    assert first[3] != second[3]
    assert len(unb64u(first[2])) == 12


@pytest.mark.parametrize("iv_length", [12, 16])
def test_twelve_and_sixteen_byte_ivs_are_accepted(
    pas_key: rsa.RSAPrivateKey, kid: str, decrypter: JweDecrypter, iv_length: int
) -> None:
    """A JWE with a 12-byte (RFC) or 16-byte (Mastercard Python) IV decrypts."""
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": kid, "cty": "application/json"}
    compact = hand_made_jwe(pas_key.public_key(), header, PLAINTEXT, iv_length)
    assert decrypter.decrypt(compact) == PLAINTEXT


def test_other_iv_lengths_are_refused(
    pas_key: rsa.RSAPrivateKey, kid: str, decrypter: JweDecrypter
) -> None:
    """An 8-byte IV is not one of the two accepted lengths."""
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": kid}
    compact = hand_made_jwe(pas_key.public_key(), header, PLAINTEXT, 8)
    assert reason_of(decrypter, compact) == "bad_iv"


def test_zeroed_tag_is_rejected(encrypter: JweEncrypter, decrypter: JweDecrypter) -> None:
    """A tag of sixteen zero bytes fails the GCM check."""
    compact = with_part(encrypter.encrypt(PLAINTEXT), 4, b64u(bytes(16)))
    assert reason_of(decrypter, compact) == "tag_mismatch"


def test_flipped_ciphertext_byte_is_rejected(
    encrypter: JweEncrypter, decrypter: JweDecrypter
) -> None:
    """Flipping one bit of the ciphertext fails the GCM check."""
    compact = encrypter.encrypt(PLAINTEXT)
    ciphertext = bytearray(unb64u(compact.split(".")[3]))
    ciphertext[5] ^= 0x01
    assert reason_of(decrypter, with_part(compact, 3, b64u(bytes(ciphertext)))) == "tag_mismatch"


def test_header_is_authenticated(
    pas_key: rsa.RSAPrivateKey, kid: str, decrypter: JweDecrypter
) -> None:
    """Swapping the protected header for an equivalent one breaks the tag (it is the AAD)."""
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": kid}
    compact = hand_made_jwe(pas_key.public_key(), header, PLAINTEXT, 12)
    respaced = b64u(json.dumps(header, separators=(",", ":")).encode())
    assert reason_of(decrypter, with_part(compact, 0, respaced)) == "tag_mismatch"


def test_truncated_jwe_is_rejected(encrypter: JweEncrypter, decrypter: JweDecrypter) -> None:
    """A JWE cut short loses tag bytes, or whole segments, and is refused either way."""
    compact = encrypter.encrypt(PLAINTEXT)
    tag = unb64u(compact.split(".")[4])
    assert reason_of(decrypter, with_part(compact, 4, b64u(tag[:12]))) == "truncated"
    assert reason_of(decrypter, with_part(compact, 4, "")) == "truncated"
    key = unb64u(compact.split(".")[1])
    assert reason_of(decrypter, with_part(compact, 1, b64u(key[:-1]))) == "truncated"
    assert reason_of(decrypter, compact.rsplit(".", 1)[0]) == "not_five_parts"
    assert reason_of(decrypter, compact + ".x") == "not_five_parts"


def test_wrong_kid_is_rejected(pas_key: rsa.RSAPrivateKey, encrypter: JweEncrypter) -> None:
    """A JWE addressed to another kid is refused before any RSA work."""
    other = JweDecrypter(pas_key, expected_kid="0" * 64)
    assert reason_of(other, encrypter.encrypt(PLAINTEXT)) == "kid_mismatch"
    lenient = JweDecrypter(pas_key, expected_kid=None)
    assert lenient.decrypt(encrypter.encrypt(PLAINTEXT)) == PLAINTEXT


def test_wrong_key_is_rejected(encrypter: JweEncrypter) -> None:
    """Another private key cannot unwrap the content key."""
    stranger = JweDecrypter(generate_rsa_key(), expected_kid=None)
    assert reason_of(stranger, encrypter.encrypt(PLAINTEXT)) == "key_unwrap_failed"


@pytest.mark.parametrize(
    ("index", "value", "reason"),
    [
        (0, "eyJhbGciOi=", "bad_base64"),
        (2, "a+b/", "bad_base64"),
        (3, "abcde", "bad_base64"),
        (0, b64u(b"not json"), "bad_header"),
        (0, b64u(b"[1, 2]"), "bad_header"),
        (0, b64u(b'{"alg":"RSA-OAEP","enc":"A256GCM"}'), "unsupported_algorithm"),
        (0, b64u(b'{"alg":"RSA-OAEP-256","enc":"A128CBC-HS256"}'), "unsupported_algorithm"),
        (0, b64u(b'{"alg":"RSA-OAEP-256","enc":"A256GCM","zip":"DEF"}'), "unsupported_algorithm"),
    ],
)
def test_malformed_segments_have_their_reason(
    pas_key: rsa.RSAPrivateKey, encrypter: JweEncrypter, index: int, value: str, reason: str
) -> None:
    """Bad base64, non-object or non-JSON headers and other algorithms are each named."""
    decrypter = JweDecrypter(pas_key, expected_kid=None)
    assert reason_of(decrypter, with_part(encrypter.encrypt(PLAINTEXT), index, value)) == reason


def test_wrap_and_unwrap_payload() -> None:
    """The envelope helpers find the JWE under any known field and return None for plain bodies."""
    assert wrap_payload("a.b.c.d.e") == {"encryptedValue": "a.b.c.d.e"}
    for field in ("encryptedValue", "encryptedData", "encryptedPayload"):
        assert unwrap_payload(wrap_payload("a.b.c.d.e", field)) == (field, "a.b.c.d.e")
    assert unwrap_payload({"pointsAdjusted": 250}) is None
    assert unwrap_payload([{"encryptedValue": "x"}]) is None
    assert unwrap_payload({"secret": "x"}, fields=("secret",)) == ("secret", "x")


@pytest.mark.parametrize(
    "body", [{"encryptedValue": 3}, {"encryptedValue": "x", "encryptedData": "y"}]
)
def test_unwrap_rejects_ambiguous_or_non_string_envelopes(body: dict[str, object]) -> None:
    """Two encrypted fields at once, or a non-string value, is a bad envelope."""
    with pytest.raises(DecryptionError, match="bad_envelope"):
        unwrap_payload(body)
