"""TLS of the connection to PAS: the one ``ssl.SSLContext`` the HTTP client is given.

Every transport under httpx (httpcore's, aiohttp's and ours, ``service.pas.native``) takes
this context, so what it says holds whichever is chosen:

- TLS 1.2 at least (``MIN_TLS_VERSION``); the certificate chain verified and the host name
  checked, always (no setting turns either off);
- trusted CAs: the PEM bundle ``PA_PAS__CA_FILE`` alone when set, else certifi's bundle
  (what httpx trusts by default). ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` are not read: the
  setting is the one way to change whom the service trusts;
- mutual TLS when ``PA_PAS__CLIENT_CERT_FILE`` is set: that certificate (PEM, its chain
  after it) with its key, from ``PA_PAS__CLIENT_KEY_FILE`` or the same file, decrypted with
  the password in ``PA_PAS__CLIENT_KEY_PASSWORD_FILE``. The pair is checked before it is
  handed to OpenSSL, so a wrong password, a key of another certificate or an expired
  certificate is a ``StartupError`` naming the setting at fault, never key material.

Redirects are never followed (``open_http_client``): a signed request goes where it was
signed for, or nowhere. :func:`tls_failure` turns an ``ssl`` error buried in an HTTP
client's exception chain into one readable sentence and the setting to look at.
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import certifi
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from pydantic import SecretBytes

from service.errors import StartupError
from service.security.errors import CertificateError
from service.security.keys import CertificateStatus, check_certificate_validity
from service.settings import PasSettings

MIN_TLS_VERSION = ssl.TLSVersion.TLSv1_2
COMPONENT = "PAS TLS"


@dataclass(frozen=True)
class PasTls:
    """The client context for PAS and what start-up reports about it."""

    context: ssl.SSLContext
    trusted: str
    """Whom the context trusts: the CA file, or certifi's bundle."""
    client_certificate: str | None = None
    """The mutual-TLS certificate's subject, or ``None`` without one."""
    warnings: list[str] = field(default_factory=list)
    client_certificate_expiry: dt.datetime | None = None
    """When the mutual-TLS certificate expires, or ``None`` without one."""


def load_pas_tls(settings: PasSettings, *, now: dt.datetime) -> PasTls:
    """The TLS context the settings describe; ``StartupError`` naming the setting at fault."""
    if settings.ca_file is None:
        context, trusted = ssl.create_default_context(cafile=certifi.where()), "certifi's bundle"
    else:
        trusted = str(settings.ca_file)
        try:
            context = ssl.create_default_context(cafile=str(settings.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(
                COMPONENT,
                f"{settings.ca_file}: {_unreadable(exc, 'no PEM certificate in it')}",
                setting="PA_PAS__CA_FILE",
            ) from None
    context.minimum_version = MIN_TLS_VERSION
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if settings.client_cert_file is None:
        return PasTls(context, trusted)
    subject, warnings, expiry = _load_client_certificate(context, settings, now)
    return PasTls(context, trusted, subject, warnings, expiry)


def _load_client_certificate(
    context: ssl.SSLContext, settings: PasSettings, now: dt.datetime
) -> tuple[str, list[str], dt.datetime]:
    cert_path = settings.client_cert_file
    assert cert_path is not None
    key_path = settings.client_key_file or cert_path
    key_setting = (
        "PA_PAS__CLIENT_KEY_FILE" if settings.client_key_file else "PA_PAS__CLIENT_CERT_FILE"
    )
    password = _password(settings.client_key_password_file)
    try:
        certificate = x509.load_pem_x509_certificates(_read(cert_path, "PA_PAS__CLIENT_CERT_FILE"))[
            0
        ]
    except ValueError:
        raise StartupError(
            COMPONENT, f"{cert_path}: no PEM certificate in it", setting="PA_PAS__CLIENT_CERT_FILE"
        ) from None
    key = _private_key(key_path, password, key_setting, settings.client_key_password_file)
    if _public_der(key) != certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise StartupError(
            COMPONENT,
            f"{key_path}: the key does not belong to the certificate {cert_path}",
            setting=key_setting,
        )
    warnings: list[str] = []
    try:
        validity = check_certificate_validity(
            certificate, now=now, warn_within_days=settings.certificate_warning_days
        )
    except CertificateError as exc:
        when = f" (not after {exc.not_after:%Y-%m-%d})" if exc.not_after else ""
        raise StartupError(
            COMPONENT,
            f"the client certificate {cert_path} is {exc.reason.replace('_', ' ')}{when}",
            setting="PA_PAS__CLIENT_CERT_FILE",
        ) from None
    if validity.status is CertificateStatus.EXPIRING_SOON:
        warnings.append(
            f"the TLS client certificate expires on {validity.not_after:%Y-%m-%d}"
            f" ({validity.remaining.days} days; setting PA_PAS__CLIENT_CERT_FILE)"
        )
    try:
        context.load_cert_chain(
            cert_path, key_path, password=None if password is None else password.get_secret_value()
        )
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(
            COMPONENT, f"{cert_path}: {_unreadable(exc, 'refused by OpenSSL')}", setting=key_setting
        ) from None
    return certificate.subject.rfc4514_string(), warnings, validity.not_after


def _password(path: Path | None) -> SecretBytes | None:
    """The client key's password, held as a secret from the moment it is read."""
    if path is None:
        return None
    value = _read(path, "PA_PAS__CLIENT_KEY_PASSWORD_FILE").rstrip(b"\r\n")
    return SecretBytes(value) if value else None


def _private_key(
    path: Path, password: SecretBytes | None, setting: str, password_file: Path | None
) -> PrivateKeyTypes:
    data = _read(path, setting)
    try:
        return serialization.load_pem_private_key(
            data, None if password is None else password.get_secret_value()
        )
    except TypeError:  # a password is needed and there is none, or the other way round
        problem = (
            "the key is encrypted and no password is set"
            if password is None
            else "a password is set but the key is not encrypted"
        )
        raise StartupError(
            COMPONENT, f"{path}: {problem}", setting="PA_PAS__CLIENT_KEY_PASSWORD_FILE"
        ) from None
    except ValueError:
        if password is not None and b"ENCRYPTED" in data:
            raise StartupError(
                COMPONENT,
                f"{path}: wrong password (in {password_file})",
                setting="PA_PAS__CLIENT_KEY_PASSWORD_FILE",
            ) from None
        raise StartupError(
            COMPONENT, f"{path}: no PEM private key in it", setting=setting
        ) from None


def _public_der(key: PrivateKeyTypes) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StartupError(
            COMPONENT, f"cannot read {path}: {exc.strerror or exc}", setting=setting
        ) from None


def _unreadable(exc: OSError, ssl_problem: str) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"{ssl_problem} ({exc.reason or exc})"
    return f"cannot read it: {exc.strerror or exc}"


# --- failures on the wire ----------------------------------------------------------------

_HOST_MISMATCH = frozenset({62, 64})  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
_REFUSED_OUR_CERTIFICATE = ("CERTIFICATE", "UNKNOWN_CA", "ACCESS_DENIED")


@dataclass(frozen=True)
class TlsFailure:
    """A TLS failure in one sentence, and the setting most likely at fault."""

    text: str
    setting: str


def tls_failure(exc: BaseException) -> TlsFailure | None:
    """The TLS failure in ``exc``'s chain (causes and contexts), or ``None``.

    ``certificate verify failed: <why>`` for PAS's certificate or host name not verifying
    (``PA_PAS__CA_FILE``, or ``PA_PAS__BASE_URL`` for a host name the certificate does not
    name); otherwise OpenSSL's reason: an alert about a certificate, such as
    ``TLSV13_ALERT_CERTIFICATE_REQUIRED``, is the server refusing ours
    (``PA_PAS__CLIENT_CERT_FILE``); anything else, ``UNSUPPORTED_PROTOCOL`` (no TLS version
    in common) for instance, is about the server (``PA_PAS__BASE_URL``).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # aiohttp's wrappers subclass the ssl errors without their attributes: the error
        # they wrap is further down the chain.
        message = getattr(current, "verify_message", None)
        if isinstance(current, ssl.SSLCertVerificationError) and message:
            code = getattr(current, "verify_code", None)
            at_fault = "PA_PAS__BASE_URL" if code in _HOST_MISMATCH else "PA_PAS__CA_FILE"
            return TlsFailure(f"TLS: certificate verify failed: {message}", at_fault)
        reason = getattr(current, "reason", None)
        if isinstance(current, ssl.SSLError) and isinstance(reason, str) and reason:
            ours = "ALERT" in reason and any(word in reason for word in _REFUSED_OUR_CERTIFICATE)
            return TlsFailure(
                f"TLS: {reason}", "PA_PAS__CLIENT_CERT_FILE" if ours else "PA_PAS__BASE_URL"
            )
        current = current.__cause__ or current.__context__
    return None
