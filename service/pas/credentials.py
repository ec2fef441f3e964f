"""Loading and checking the PAS credentials at start-up: signing key, certificates, secrets.

Every problem becomes a ``StartupError`` that names the setting and the file, never the
key material; certificates close to expiry come back as warnings for the caller to log.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import SecretStr

from service.errors import StartupError
from service.security.errors import CertificateError, KeyLoadError
from service.security.jwe import JweDecrypter, JweEncrypter
from service.security.keys import (
    CertificateStatus,
    KeyAndCertificate,
    check_certificate_validity,
    check_key_matches_certificate,
    load_certificate,
    load_key_and_certificate,
)
from service.security.oauth1 import OAuth1Signer
from service.settings import PasSettings


@dataclass(frozen=True)
class Credentials:
    """What the client needs to sign, encrypt and decrypt."""

    signer: OAuth1Signer
    encrypter: JweEncrypter
    decrypter: JweDecrypter
    warnings: list[str] = field(default_factory=list)
    expiry: dict[str, datetime] = field(default_factory=dict)
    """When each loaded certificate expires, by its ``certificate`` label of
    ``points_adjuster_certificate_expiry_seconds`` (``signing`` when the signing key file has
    one, ``pas_encryption``, ``decryption`` when the decryption key has a certificate)."""
    signing_fingerprint: str = ""
    """Lowercase hex SHA-256 of the signing key's public key (DER SubjectPublicKeyInfo, as a
    ``kid`` is): names the key in logs without showing it."""
    decryption_fingerprint: str = ""
    """The same for the response-decryption key."""

    @property
    def fingerprints(self) -> dict[str, str]:
        """What identifies each key, for a log line: never key material."""
        return {
            "encryption_kid": self.encrypter.kid,
            "signing_fingerprint": self.signing_fingerprint,
            "decryption_fingerprint": self.decryption_fingerprint,
        }


def public_key_fingerprint(key: rsa.RSAPrivateKey) -> str:
    """Lowercase hex SHA-256 of the DER SubjectPublicKeyInfo of ``key``'s public half."""
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def _secret(value: SecretStr | None, path: Path | None, setting: str) -> SecretStr | None:
    """The secret from its file (stripped) when one is named, else the value; ``None`` for
    neither or an empty one. Still a ``SecretStr``: unwrapped only where it is used."""
    if path is not None:
        try:
            value = SecretStr(path.read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise StartupError(
                "PAS credentials", f"cannot read {path}: {exc.strerror}", setting=setting
            ) from exc
    return value if value is not None and value.get_secret_value() else None


def _key_problem(exc: KeyLoadError) -> str:
    meaning = {
        "not_found": "file not found",
        "unreadable": "file cannot be read",
        "password_required": "the file is encrypted and no password is set",
        "wrong_password": "wrong password",
        "unexpected_password": "a password is set but the file is not encrypted",
        "not_a_key": "no private key in the file",
        "not_rsa": "the key is not RSA",
        "key_too_small": "the RSA key is shorter than 2048 bits",
        "not_a_certificate": "not a certificate",
    }.get(exc.reason, exc.reason)
    return f"{exc.path}: {meaning}"


def _check_expiry(
    cert_name: str,
    cert: x509.Certificate,
    setting: str,
    settings: PasSettings,
    now: datetime,
    warnings: list[str],
) -> datetime:
    """The certificate's expiry; ``StartupError`` when it is not valid now, a warning added
    when it expires within ``certificate_warning_days``."""
    try:
        validity = check_certificate_validity(
            cert,
            now=now,
            warn_within_days=settings.certificate_warning_days,
        )
    except CertificateError as exc:
        when = f" (not after {exc.not_after:%Y-%m-%d})" if exc.not_after else ""
        raise StartupError(
            "PAS credentials",
            f"the {cert_name} is {exc.reason.replace('_', ' ')}{when}",
            setting=setting,
        ) from exc
    if validity.status is CertificateStatus.EXPIRING_SOON:
        warnings.append(
            f"the {cert_name} expires on {validity.not_after:%Y-%m-%d}"
            f" ({validity.remaining.days} days; setting {setting})"
        )
    return validity.not_after


PASSWORD_PROBLEMS = frozenset({"wrong_password", "password_required", "unexpected_password"})


def _load_key(
    component: str,
    path: Path,
    password: SecretStr | None,
    *,
    path_setting: str,
    password_setting: str,
) -> KeyAndCertificate:
    """A key (and its certificate, if the file has one); the error names the setting at fault."""
    try:
        return load_key_and_certificate(
            path, password=None if password is None else password.get_secret_value()
        )
    except KeyLoadError as exc:
        setting = password_setting if exc.reason in PASSWORD_PROBLEMS else path_setting
        raise StartupError(component, _key_problem(exc), setting=setting) from exc


def load_credentials(settings: PasSettings, *, now: datetime) -> Credentials:
    """Load and cross-check every key and certificate; raise ``StartupError`` on a problem."""
    warnings: list[str] = []
    expiry: dict[str, datetime] = {}
    consumer_key = _secret(
        settings.consumer_key,
        settings.consumer_key_file,
        "PA_PAS__CONSUMER_KEY_FILE" if settings.consumer_key_file else "PA_PAS__CONSUMER_KEY",
    )
    if consumer_key is None:
        raise StartupError(
            "PAS credentials", "no OAuth1 consumer key is set", setting="PA_PAS__CONSUMER_KEY"
        )
    password_setting = (
        "PA_PAS__SIGNING_KEY_PASSWORD_FILE"
        if settings.signing_key_password_file
        else "PA_PAS__SIGNING_KEY_PASSWORD"
    )
    password = _secret(
        settings.signing_key_password, settings.signing_key_password_file, password_setting
    )
    signing = _load_key(
        "PAS signing key",
        settings.signing_key_path,
        password,
        path_setting="PA_PAS__SIGNING_KEY_PATH",
        password_setting=password_setting,
    )
    if signing.certificate is not None:
        try:
            check_key_matches_certificate(signing.private_key, signing.certificate)
        except CertificateError as exc:
            raise StartupError(
                "PAS signing key",
                f"{settings.signing_key_path}: the key does not match its certificate",
                setting="PA_PAS__SIGNING_KEY_PATH",
            ) from exc
        expiry["signing"] = _check_expiry(
            "signing certificate",
            signing.certificate,
            "PA_PAS__SIGNING_KEY_PATH",
            settings,
            now,
            warnings,
        )

    try:
        certificate = load_certificate(settings.encryption_certificate_path)
    except KeyLoadError as exc:
        raise StartupError(
            "PAS encryption certificate",
            _key_problem(exc),
            setting="PA_PAS__ENCRYPTION_CERTIFICATE_PATH",
        ) from exc
    expiry["pas_encryption"] = _check_expiry(
        "PAS encryption certificate",
        certificate,
        "PA_PAS__ENCRYPTION_CERTIFICATE_PATH",
        settings,
        now,
        warnings,
    )
    try:
        encrypter = JweEncrypter(certificate)
    except CertificateError as exc:
        raise StartupError(
            "PAS encryption certificate",
            f"{settings.encryption_certificate_path}: {exc}",
            setting="PA_PAS__ENCRYPTION_CERTIFICATE_PATH",
        ) from exc

    decryption_password_setting = (
        "PA_PAS__DECRYPTION_KEY_PASSWORD_FILE"
        if settings.decryption_key_password_file
        else "PA_PAS__DECRYPTION_KEY_PASSWORD"
    )
    decryption_password = _secret(  # an empty value or file: the key has no password
        settings.decryption_key_password,
        settings.decryption_key_password_file,
        decryption_password_setting,
    )
    decryption = _load_key(
        "PAS decryption key",
        settings.decryption_key_path,
        decryption_password,
        path_setting="PA_PAS__DECRYPTION_KEY_PATH",
        password_setting=decryption_password_setting,
    )
    registered = decryption.certificate
    if settings.decryption_certificate_path is not None:
        try:
            registered = load_certificate(settings.decryption_certificate_path)
        except KeyLoadError as exc:
            raise StartupError(
                "PAS decryption certificate",
                _key_problem(exc),
                setting="PA_PAS__DECRYPTION_CERTIFICATE_PATH",
            ) from exc
        try:
            check_key_matches_certificate(decryption.private_key, registered)
        except CertificateError as exc:
            raise StartupError(
                "PAS decryption key",
                f"{settings.decryption_key_path} does not match the certificate"
                f" {settings.decryption_certificate_path}",
                setting="PA_PAS__DECRYPTION_CERTIFICATE_PATH",
            ) from exc
    if registered is not None:
        expiry["decryption"] = _check_expiry(
            "response-encryption certificate",
            registered,
            "PA_PAS__DECRYPTION_CERTIFICATE_PATH"
            if settings.decryption_certificate_path
            else "PA_PAS__DECRYPTION_KEY_PATH",
            settings,
            now,
            warnings,
        )
    return Credentials(
        signer=OAuth1Signer(
            consumer_key, signing.private_key, signature_method=settings.signature_method
        ),
        encrypter=encrypter,
        decrypter=JweDecrypter(decryption.private_key, expected_kid=None),
        warnings=warnings,
        expiry=expiry,
        signing_fingerprint=public_key_fingerprint(signing.private_key),
        decryption_fingerprint=public_key_fingerprint(decryption.private_key),
    )
