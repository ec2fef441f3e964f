"""Development key sets: throw-away RSA keys and self-signed certificates for the sandbox.

Never for production: real keys come from Mastercard Developers.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from service.security.keys import MIN_RSA_KEY_BITS

# The password Mastercard's developer portal suggests for sandbox keystores.
DEV_P12_PASSWORD = "keystorepassword"  # noqa: S105 - a documented dev default, not a secret


@dataclass(frozen=True, slots=True)
class DevKeySet:
    """Paths of a development key set written by ``generate_dev_keyset``."""

    directory: Path
    client_signing_p12: Path
    client_signing_certificate: Path
    client_decryption_key: Path
    client_decryption_certificate: Path
    pas_encryption_certificate: Path
    pas_decryption_key: Path

    @classmethod
    def in_directory(cls, directory: Path) -> DevKeySet:
        """The file names ``generate_dev_keyset`` writes, in ``directory``."""
        return cls(
            directory=directory,
            client_signing_p12=directory / "client-signing.p12",
            client_signing_certificate=directory / "client-signing.crt.pem",
            client_decryption_key=directory / "client-decryption.key.pem",
            client_decryption_certificate=directory / "client-decryption.crt.pem",
            pas_encryption_certificate=directory / "pas-encryption.crt.pem",
            pas_decryption_key=directory / "pas-decryption.key.pem",
        )

    def files(self) -> tuple[Path, ...]:
        return (
            self.client_signing_p12,
            self.client_signing_certificate,
            self.client_decryption_key,
            self.client_decryption_certificate,
            self.pas_encryption_certificate,
            self.pas_decryption_key,
        )


def generate_rsa_key(bits: int = MIN_RSA_KEY_BITS) -> rsa.RSAPrivateKey:
    """A fresh RSA private key with public exponent 65537."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def make_self_signed_certificate(
    key: rsa.RSAPrivateKey,
    common_name: str,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
    usage: Literal["signing", "encryption"] = "signing",
) -> x509.Certificate:
    """A self-signed end-entity certificate for ``key`` with the given validity period."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    signing = usage == "signing"
    key_usage = x509.KeyUsage(
        digital_signature=signing,
        content_commitment=False,
        key_encipherment=not signing,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .sign(key, hashes.SHA256())
    )


def generate_dev_keyset(
    directory: str | Path,
    *,
    days: int = 365,
    p12_password: str = DEV_P12_PASSWORD,
    overwrite: bool = False,
    now: dt.datetime | None = None,
) -> DevKeySet:
    """Write a complete development key set (RSA-2048, self-signed) into ``directory``.

    Client side: the signing key as PKCS#12 (password ``p12_password``) plus its certificate
    (the sandbox verifies signatures with it), and the response-decryption key (PEM) plus its
    certificate (what PAS would encrypt responses to). PAS side: the encryption certificate the
    client encrypts to, and its private key for the sandbox. Private keys are mode 0600.
    Raises ``FileExistsError`` before writing anything if a file exists and not ``overwrite``.
    """
    directory = Path(directory)
    keyset = DevKeySet.in_directory(directory)
    if not overwrite:
        existing = [str(p) for p in keyset.files() if p.exists() or p.is_symlink()]
        if existing:
            raise FileExistsError(f"refusing to overwrite: {', '.join(existing)}")

    start = (now if now is not None else dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5)
    end = start + dt.timedelta(days=days, minutes=5)

    def pair(
        cn: str, usage: Literal["signing", "encryption"]
    ) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
        key = generate_rsa_key()
        cert = make_self_signed_certificate(key, cn, not_before=start, not_after=end, usage=usage)
        return key, cert

    signing_key, signing_cert = pair("points-adjuster dev client signing", "signing")
    client_key, client_cert = pair("points-adjuster dev client encryption", "encryption")
    pas_key, pas_cert = pair("pas-sandbox dev encryption", "encryption")

    p12 = pkcs12.serialize_key_and_certificates(
        name=b"client-signing",
        key=signing_key,
        cert=signing_cert,
        cas=None,
        encryption_algorithm=serialization.BestAvailableEncryption(p12_password.encode()),
    )
    outputs: list[tuple[Path, bytes, int]] = [
        (keyset.client_signing_p12, p12, 0o600),
        (keyset.client_signing_certificate, _cert_pem(signing_cert), 0o644),
        (keyset.client_decryption_key, _key_pem(client_key), 0o600),
        (keyset.client_decryption_certificate, _cert_pem(client_cert), 0o644),
        (keyset.pas_encryption_certificate, _cert_pem(pas_cert), 0o644),
        (keyset.pas_decryption_key, _key_pem(pas_key), 0o600),
    ]
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path, data, mode in outputs:
        _write_file(path, data, mode, overwrite=overwrite)
    return keyset


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_file(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    """Create ``path`` with ``mode`` set before any byte is written; never follow a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    flags |= os.O_TRUNC if overwrite else os.O_EXCL
    fd = os.open(path, flags, mode)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), mode)
        fh.write(data)
