"""Key material of a secured sandbox: read once, at start-up, into the codec and the gateway.

:func:`load_security_material` reads every file :class:`SandboxSecurity` names and checks
that the PAS private key belongs to the PAS encryption certificate, so a mismatched key set
fails at start-up rather than as a 400 on the first request. :func:`secured_hooks` builds
the :class:`~pa_devkit.sandbox.codec.JweCodec` and the
:class:`~pa_devkit.sandbox.gateway.OAuth1Gateway` from it.

Errors are the :mod:`service.security.errors` ones (``KeyLoadError`` names the file).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from pa_devkit.oauth1_verifier import OAuth1Verifier
from pa_devkit.sandbox.codec import JweCodec
from pa_devkit.sandbox.config import SandboxSecurity
from pa_devkit.sandbox.gateway import EventLogger, OAuth1Gateway
from service.security.errors import CertificateError
from service.security.jwe import JweDecrypter, JweEncrypter
from service.security.keys import (
    check_key_matches_certificate,
    kid_for_certificate,
    load_certificate,
    load_private_key,
)
from service.security.oauth1 import SignatureMethod


@dataclass(frozen=True, slots=True)
class SecurityMaterial:
    """The loaded keys and certificates of a :class:`SandboxSecurity`."""

    client_signing_keys: Mapping[str, tuple[rsa.RSAPublicKey, ...]]
    """Each consumer key's signing keys: its current one, then any previous one."""
    pas_decryption_key: rsa.RSAPrivateKey
    pas_kid: str
    client_encryption_certificate: x509.Certificate | None
    max_skew_seconds: int
    signature_methods: Collection[SignatureMethod]
    previous_pas_keys: tuple[tuple[rsa.RSAPrivateKey, str], ...] = ()
    """Older PAS decryption keys and their kids, still accepted during a rotation."""


def load_security_material(security: SandboxSecurity) -> SecurityMaterial:
    """Read and check every file; raises ``KeyLoadError`` or ``CertificateError``."""
    signing_keys: dict[str, tuple[rsa.RSAPublicKey, ...]] = {}
    for consumer_key, path in security.clients.items():
        paths = [path, *filter(None, [security.previous_clients.get(consumer_key)])]
        signing_keys[consumer_key] = tuple(_signing_key(consumer_key, each) for each in paths)
    pas_certificate = load_certificate(security.pas_encryption_certificate)
    pas_key = load_private_key(security.pas_decryption_key)
    check_key_matches_certificate(pas_key, pas_certificate)
    previous_pas_keys = []
    for key_path, certificate_path in security.previous_pas_keys:
        certificate = load_certificate(certificate_path)
        key = load_private_key(key_path)
        check_key_matches_certificate(key, certificate)
        previous_pas_keys.append((key, kid_for_certificate(certificate)))
    client_certificate = (
        None
        if security.client_encryption_certificate is None
        else load_certificate(security.client_encryption_certificate)
    )
    return SecurityMaterial(
        client_signing_keys=signing_keys,
        pas_decryption_key=pas_key,
        pas_kid=kid_for_certificate(pas_certificate),
        client_encryption_certificate=client_certificate,
        max_skew_seconds=security.max_skew_seconds,
        signature_methods=security.signature_methods,
        previous_pas_keys=tuple(previous_pas_keys),
    )


def _signing_key(consumer_key: str, path: Path) -> rsa.RSAPublicKey:
    public_key = load_certificate(path).public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise CertificateError("not_rsa", f"the signing certificate of {consumer_key!r}")
    return public_key


def secured_hooks(
    material: SecurityMaterial,
    *,
    clock: Callable[[], float],
    logger: EventLogger | None = None,
) -> tuple[JweCodec, OAuth1Gateway]:
    """The JWE codec and the OAuth 1.0a gateway; ``clock`` gives Unix seconds."""
    decrypters = [
        JweDecrypter(key, expected_kid=kid)
        for key, kid in (
            (material.pas_decryption_key, material.pas_kid),
            *material.previous_pas_keys,
        )
    ]
    certificate = material.client_encryption_certificate
    encrypter = None if certificate is None else JweEncrypter(certificate)
    verifier = OAuth1Verifier(
        material.client_signing_keys,
        clock=clock,
        max_skew_seconds=material.max_skew_seconds,
        signature_methods=material.signature_methods,
    )
    return JweCodec(decrypters, encrypter), OAuth1Gateway(verifier, logger=logger)
