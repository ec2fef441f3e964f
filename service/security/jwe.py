"""Compact JWE for PAS payloads: RSA-OAEP-256 key wrapping and A256GCM content encryption.

Both directions are written on ``cryptography`` primitives, following RFC 7516.

Encryption (section 5.1): a fresh 256-bit content key and 96-bit IV per call, the key wrapped
with RSA-OAEP (SHA-256, MGF1-SHA-256), the plaintext sealed with AES-256-GCM whose additional
data is the encoded protected header, which is fixed per encrypter and encoded once. jwcrypto
did this job first; it spends about 140 µs per call over the primitives (it deep-copies its
header registry for every token), a tenth of the service's crypto budget per request
(docs/benchmarks.md). The tests still check our tokens against jwcrypto and Mastercard's own
library, both ways.

Decryption (section 5.2): strict base64url, header checks, RSA-OAEP unwrap, then AES-256-GCM.
jwcrypto folds every failure (wrong key, bad tag, broken segments) into one
``InvalidJWEData`` whose only distinction is its message text, and the reason codes here must
not depend on another library's wording. The GCM tag is always checked; Mastercard's Python
library skips that check, this module never does. Both 12- and 16-byte IVs are accepted (the
second is what Mastercard's Python library sends).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.security.errors import CertificateError, DecryptionError
from service.security.keys import kid_for_certificate

ALG = "RSA-OAEP-256"
ENC = "A256GCM"
CTY = "application/json"
ENCRYPTED_FIELDS = ("encryptedValue", "encryptedData", "encryptedPayload")
DEFAULT_ENCRYPTED_FIELD = "encryptedValue"
ACCEPTED_IV_LENGTHS = frozenset({12, 16})  # RFC 7518 tools / Mastercard's Python library
TAG_LENGTH = 16
CEK_LENGTH = 32
IV_LENGTH = 12

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_SEGMENTS = ("header", "encrypted_key", "iv", "ciphertext", "tag")
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


class JweEncrypter:
    """Encrypts request bodies to the holder of ``encryption_certificate`` (PAS)."""

    def __init__(self, encryption_certificate: x509.Certificate) -> None:
        public_key = encryption_certificate.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise CertificateError("not_rsa", "the encryption certificate must hold an RSA key")
        self._kid = kid_for_certificate(encryption_certificate)
        header = {"alg": ALG, "enc": ENC, "kid": self._kid, "cty": CTY}
        protected = json.dumps(header, separators=(",", ":")).encode("utf-8")
        self._header_b64 = _b64url_encode(protected)
        self._aad = self._header_b64.encode("ascii")
        self._public_key = public_key

    @property
    def kid(self) -> str:
        return self._kid

    def encrypt(self, plaintext: bytes) -> str:
        """Compact JWE of ``plaintext`` with a fresh content key and IV."""
        cek = os.urandom(CEK_LENGTH)
        iv = os.urandom(IV_LENGTH)
        wrapped_key = self._public_key.encrypt(cek, _OAEP)
        sealed = AESGCM(cek).encrypt(iv, plaintext, self._aad)
        ciphertext, tag = sealed[:-TAG_LENGTH], sealed[-TAG_LENGTH:]
        return ".".join(
            (
                self._header_b64,
                _b64url_encode(wrapped_key),
                _b64url_encode(iv),
                _b64url_encode(ciphertext),
                _b64url_encode(tag),
            )
        )


class JweDecrypter:
    """Decrypts compact JWEs addressed to ``private_key``; rejects anything it cannot verify.

    With ``expected_kid`` set, a JWE whose header names another key (or none) is refused before
    any RSA work is done.
    """

    def __init__(self, private_key: rsa.RSAPrivateKey, *, expected_kid: str | None) -> None:
        self._private_key = private_key
        self._expected_kid = expected_kid
        self._wrapped_key_length = (private_key.key_size + 7) // 8

    def decrypt(self, compact: str) -> bytes:
        """The plaintext of ``compact``; ``DecryptionError`` with a reason code otherwise."""
        parts = compact.strip().split(".")
        if len(parts) != len(_SEGMENTS):
            raise DecryptionError("not_five_parts", f"expected 5 segments, got {len(parts)}")
        header_b64 = parts[0]
        header_bytes, wrapped_key, iv, ciphertext, tag = (
            _b64url_decode(name, part) for name, part in zip(_SEGMENTS, parts, strict=True)
        )
        self._check_header(header_bytes)

        if len(wrapped_key) < self._wrapped_key_length:
            raise DecryptionError("truncated", "encrypted key shorter than the RSA modulus")
        if len(wrapped_key) > self._wrapped_key_length:
            raise DecryptionError("key_unwrap_failed", "encrypted key longer than the RSA modulus")
        if len(iv) not in ACCEPTED_IV_LENGTHS:
            raise DecryptionError("bad_iv", f"IV of {len(iv)} bytes; expected 12 or 16")
        if len(tag) < TAG_LENGTH:
            raise DecryptionError("truncated", f"tag of {len(tag)} bytes; expected {TAG_LENGTH}")
        if len(tag) > TAG_LENGTH:
            raise DecryptionError("tag_mismatch", f"tag of {len(tag)} bytes; expected {TAG_LENGTH}")

        try:
            cek = self._private_key.decrypt(wrapped_key, _OAEP)
        except ValueError as exc:
            raise DecryptionError("key_unwrap_failed", "RSA-OAEP unwrap failed") from exc
        if len(cek) != CEK_LENGTH:
            raise DecryptionError("key_unwrap_failed", "content key is not 256 bits")
        try:
            return AESGCM(cek).decrypt(iv, ciphertext + tag, header_b64.encode("ascii"))
        except InvalidTag as exc:
            raise DecryptionError("tag_mismatch", "GCM authentication tag does not verify") from exc

    def _check_header(self, header_bytes: bytes) -> None:
        try:
            header = json.loads(header_bytes)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise DecryptionError("bad_header", "protected header is not JSON") from exc
        if not isinstance(header, dict):
            raise DecryptionError("bad_header", "protected header is not a JSON object")
        if header.get("alg") != ALG or header.get("enc") != ENC:
            raise DecryptionError("unsupported_algorithm", f"expected alg={ALG} enc={ENC}")
        for unsupported in ("zip", "crit"):
            if unsupported in header:
                raise DecryptionError("unsupported_algorithm", f"header parameter {unsupported!r}")
        if self._expected_kid is not None and header.get("kid") != self._expected_kid:
            raise DecryptionError("kid_mismatch", "the JWE is for another key")


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(segment: str, text: str) -> bytes:
    """Unpadded base64url as JWS/JWE use it (RFC 7515 section 2); anything else is refused."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise DecryptionError("bad_base64", f"{segment} segment is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:  # pragma: no cover - the pattern above already excludes this
        raise DecryptionError("bad_base64", f"{segment} segment is not base64url") from exc


def wrap_payload(compact: str, field: str = DEFAULT_ENCRYPTED_FIELD) -> dict[str, str]:
    """The JSON body that carries a JWE: ``{field: compact}``."""
    return {field: compact}


def unwrap_payload(obj: object, fields: Sequence[str] = ENCRYPTED_FIELDS) -> tuple[str, str] | None:
    """``(field, compact)`` when ``obj`` is an encrypted body, ``None`` when it is plain.

    Raises ``DecryptionError('bad_envelope')`` when more than one of ``fields`` is present or
    the value is not a string.
    """
    if not isinstance(obj, dict):
        return None
    present = [name for name in fields if name in obj]
    if not present:
        return None
    if len(present) > 1:
        raise DecryptionError("bad_envelope", f"several encrypted fields: {', '.join(present)}")
    value = obj[present[0]]
    if not isinstance(value, str):
        raise DecryptionError("bad_envelope", f"{present[0]} is not a string")
    return present[0], value
