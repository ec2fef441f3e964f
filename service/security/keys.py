"""RSA keys and X.509 certificates: loading, fingerprints and sanity checks.

Development key sets are made by the dev kit (``pa_devkit.keys``).

Loading sniffs the bytes rather than trusting the file name: PEM (a private key, optionally
encrypted, and any certificates in the same file), PKCS#12 (``.p12``/``.pfx``) and DER. Every
failure is a ``KeyLoadError`` naming the path and a reason code, never the key bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from service.security.errors import CertificateError, KeyLoadError

MIN_RSA_KEY_BITS = 2048
DEFAULT_EXPIRY_WARNING_DAYS = 30

_PRIVATE_KEY_PEM = re.compile(
    rb"-----BEGIN ((?:RSA |ENCRYPTED )?PRIVATE KEY)-----.+?-----END \1-----", re.DOTALL
)
_CERTIFICATE_PEM = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)

Password = str | bytes | None


@dataclass(frozen=True, slots=True)
class KeyAndCertificate:
    """A private key and, when the file held one, the certificate of its public key."""

    private_key: rsa.RSAPrivateKey
    certificate: x509.Certificate | None


class CertificateStatus(StrEnum):
    """The state of a certificate that is still usable."""

    VALID = "valid"
    EXPIRING_SOON = "expiring_soon"


@dataclass(frozen=True, slots=True)
class CertificateValidity:
    """The result of an expiry check; log it when ``status`` is ``EXPIRING_SOON``."""

    status: CertificateStatus
    not_after: dt.datetime
    remaining: dt.timedelta

    @property
    def expiring_soon(self) -> bool:
        return self.status is CertificateStatus.EXPIRING_SOON


# --- loading -------------------------------------------------------------------------------


def load_private_key(path: str | Path, *, password: Password = None) -> rsa.RSAPrivateKey:
    """Load an RSA private key from a PEM, PKCS#12 or DER file."""
    return load_key_and_certificate(path, password=password).private_key


def load_key_and_certificate(path: str | Path, *, password: Password = None) -> KeyAndCertificate:
    """Load an RSA private key and the certificate stored with it, if any.

    PKCS#12 files give the key and its certificate; PEM files give the first private key and
    the first certificate whose public key matches it.
    """
    path = Path(path)
    data = _read(path)
    pw = password.encode() if isinstance(password, str) else password
    if b"-----BEGIN" in data:
        key, certs = _load_pem(path, data, pw)
    elif _looks_like_pkcs12(data):
        key, certs = _load_pkcs12(path, data, pw)
    else:
        key, certs = _load_der(path, data, pw), []
    rsa_key = _require_rsa(path, key)
    return KeyAndCertificate(rsa_key, _matching_certificate(rsa_key, certs))


def load_certificate(path: str | Path) -> x509.Certificate:
    """Load an X.509 certificate from a PEM (first certificate in the file) or DER file."""
    path = Path(path)
    data = _read(path)
    try:
        if b"-----BEGIN" in data:
            block = _CERTIFICATE_PEM.search(data)
            if block is None:
                raise KeyLoadError(path, "not_a_certificate", "no CERTIFICATE block in PEM")
            return x509.load_pem_x509_certificate(block.group(0))
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise KeyLoadError(path, "not_a_certificate", "cannot parse X.509 certificate") from exc


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise KeyLoadError(path, "not_found", "no such file") from exc
    except OSError as exc:
        raise KeyLoadError(path, "unreadable", exc.strerror or type(exc).__name__) from exc


def _looks_like_pkcs12(data: bytes) -> bool:
    """True when ``data`` starts like a DER PFX: SEQUENCE { INTEGER 3, ... }."""
    if len(data) < 8 or data[0] != 0x30:
        return False
    length_octets = data[1] - 0x80 if data[1] & 0x80 else 0
    start = 2 + length_octets
    return data[start : start + 3] == b"\x02\x01\x03"


def _load_pem(
    path: Path, data: bytes, password: bytes | None
) -> tuple[object, list[x509.Certificate]]:
    block = _PRIVATE_KEY_PEM.search(data)
    if block is None:
        raise KeyLoadError(path, "not_a_key", "no PRIVATE KEY block in PEM")
    pem = block.group(0)
    encrypted = block.group(1) == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in pem
    if encrypted and password is None:
        raise KeyLoadError(path, "password_required", "the PEM key is encrypted")
    if not encrypted and password is not None:
        raise KeyLoadError(path, "unexpected_password", "a password was given for a plain key")
    try:
        key: object = serialization.load_pem_private_key(pem, password)
    except ValueError as exc:
        if encrypted:
            raise KeyLoadError(path, "wrong_password", "cannot decrypt the PEM key") from exc
        raise KeyLoadError(path, "not_a_key", "cannot parse the PEM key") from exc
    except (TypeError, UnsupportedAlgorithm) as exc:
        raise KeyLoadError(path, "not_a_key", "cannot parse the PEM key") from exc
    certs: list[x509.Certificate] = []
    for match in _CERTIFICATE_PEM.finditer(data):
        try:
            certs.append(x509.load_pem_x509_certificate(match.group(0)))
        except ValueError:
            continue
    return key, certs


def _load_pkcs12(
    path: Path, data: bytes, password: bytes | None
) -> tuple[object, list[x509.Certificate]]:
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password)
    except ValueError as exc:
        if password is None:
            raise KeyLoadError(path, "password_required", "the PKCS#12 file is protected") from exc
        raise KeyLoadError(
            path, "wrong_password", "cannot open the PKCS#12 file (wrong password or corrupt)"
        ) from exc
    if key is None:
        raise KeyLoadError(path, "not_a_key", "the PKCS#12 file holds no private key")
    return key, ([cert] if cert is not None else []) + list(extra)


def _load_der(path: Path, data: bytes, password: bytes | None) -> object:
    try:
        return serialization.load_der_private_key(data, password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyLoadError(path, "not_a_key", "not a PEM, PKCS#12 or DER private key") from exc


def _require_rsa(path: Path, key: object) -> rsa.RSAPrivateKey:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyLoadError(path, "not_rsa", f"expected an RSA key, got {type(key).__name__}")
    if key.key_size < MIN_RSA_KEY_BITS:
        raise KeyLoadError(path, "key_too_small", f"{key.key_size} bits < {MIN_RSA_KEY_BITS}")
    return key


def _matching_certificate(
    key: rsa.RSAPrivateKey, certs: list[x509.Certificate]
) -> x509.Certificate | None:
    for cert in certs:
        if _same_public_key(key, cert):
            return cert
    return None


# --- fingerprints and checks ---------------------------------------------------------------


def kid_for_certificate(cert: x509.Certificate) -> str:
    """The JWE ``kid``: lowercase hex SHA-256 of the certificate's DER SubjectPublicKeyInfo."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def check_key_matches_certificate(key: rsa.RSAPrivateKey, cert: x509.Certificate) -> None:
    """Raise ``CertificateError('key_mismatch')`` unless ``cert`` holds ``key``'s public key."""
    if not _same_public_key(key, cert):
        raise CertificateError(
            "key_mismatch",
            f"the private key does not belong to certificate kid={kid_for_certificate(cert)}",
        )


def check_certificate_validity(
    cert: x509.Certificate,
    *,
    now: dt.datetime | None = None,
    warn_within_days: int = DEFAULT_EXPIRY_WARNING_DAYS,
) -> CertificateValidity:
    """Raise ``CertificateError`` if ``cert`` is expired or not yet valid, else report its state.

    The status is ``EXPIRING_SOON`` when fewer than ``warn_within_days`` days remain. ``now``
    (timezone-aware; default: the current time) is injectable for tests.
    """
    now = now if now is not None else dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    not_after = cert.not_valid_after_utc
    if now >= not_after:
        raise CertificateError(
            "expired", f"certificate expired at {not_after.isoformat()}", not_after=not_after
        )
    if now < cert.not_valid_before_utc:
        raise CertificateError(
            "not_yet_valid",
            f"certificate is valid from {cert.not_valid_before_utc.isoformat()}",
            not_after=not_after,
        )
    remaining = not_after - now
    status = (
        CertificateStatus.EXPIRING_SOON
        if remaining < dt.timedelta(days=warn_within_days)
        else CertificateStatus.VALID
    )
    return CertificateValidity(status=status, not_after=not_after, remaining=remaining)


def _same_public_key(key: rsa.RSAPrivateKey, cert: x509.Certificate) -> bool:
    cert_key = cert.public_key()
    return (
        isinstance(cert_key, rsa.RSAPublicKey)
        and cert_key.public_numbers() == key.public_key().public_numbers()
    )
