"""Development TLS material: a throw-away CA, a server certificate and a client certificate.

What the sandbox serves https with (``SandboxTls``) and what the client trusts and presents
(``PA_PAS__CA_FILE``, ``PA_PAS__CLIENT_CERT_FILE``, ``PA_PAS__CLIENT_KEY_FILE``), so tests
can run the whole TLS path, mutual TLS included, on loopback. ECDSA P-256 keys: quick to
make and what most TLS stacks prefer. Never for production.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class DevTlsSet:
    """Paths of the files ``generate_dev_tls`` writes (PEM)."""

    directory: Path
    ca_certificate: Path
    server_certificate: Path
    server_key: Path
    client_certificate: Path
    client_key: Path
    """Encrypted with the ``client_key_password`` given to ``generate_dev_tls``, if any."""

    @classmethod
    def in_directory(cls, directory: Path) -> DevTlsSet:
        return cls(
            directory=directory,
            ca_certificate=directory / "tls-ca.crt.pem",
            server_certificate=directory / "tls-server.crt.pem",
            server_key=directory / "tls-server.key.pem",
            client_certificate=directory / "tls-client.crt.pem",
            client_key=directory / "tls-client.key.pem",
        )


def generate_dev_tls(
    directory: str | Path,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 30,
    client_key_password: str | None = None,
    now: dt.datetime | None = None,
) -> DevTlsSet:
    """Write a CA, a server certificate for ``hosts`` (DNS names or IP addresses, in its
    subjectAltName) and a client certificate, both issued by the CA, into ``directory``.

    Each call makes a new CA: a second set's CA does not vouch for the first set's server.
    Private keys are mode 0600; existing files are overwritten.
    """
    if not hosts:
        raise ValueError("hosts must name at least one DNS name or IP address")
    tls = DevTlsSet.in_directory(Path(directory))
    tls.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    start = (now if now is not None else dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5)
    end = start + dt.timedelta(days=days, minutes=5)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("points-adjuster dev TLS CA")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), start, end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def issue(
        common_name: str, usage: x509.ObjectIdentifier, names: list[x509.GeneralName]
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            _builder(_name(common_name), ca_name, key.public_key(), start, end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    server_key, server_cert = issue(
        "pas-sandbox dev TLS server",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [_general_name(h) for h in hosts],
    )
    client_key, client_cert = issue(
        "points-adjuster dev TLS client", ExtendedKeyUsageOID.CLIENT_AUTH, []
    )
    client_encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if client_key_password is None
        else serialization.BestAvailableEncryption(client_key_password.encode())
    )
    tls.ca_certificate.write_bytes(_pem(ca_cert))
    tls.server_certificate.write_bytes(_pem(server_cert))
    tls.client_certificate.write_bytes(_pem(client_cert))
    _write_private(tls.server_key, _key_pem(server_key, serialization.NoEncryption()))
    _write_private(tls.client_key, _key_pem(client_key, client_encryption))
    return tls


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    start: dt.datetime,
    end: dt.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(
    key: ec.EllipticCurvePrivateKey, encryption: serialization.KeySerializationEncryption
) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _write_private(path: Path, data: bytes) -> None:
    """Write ``path`` mode 0600 from its first byte, never through a symlink."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(data)
