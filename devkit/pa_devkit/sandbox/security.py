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

    client_signing_keys: Mapping[str, rsa.RSAPublicKey]
    pas_decryption_key: rsa.RSAPrivateKey
    pas_kid: str
    client_encryption_certificate: x509.Certificate | None
    max_skew_seconds: int
    signature_methods: Collection[SignatureMethod]


def load_security_material(security: SandboxSecurity) -> SecurityMaterial:
    """Read and check every file; raises ``KeyLoadError`` or ``CertificateError``."""
    signing_keys: dict[str, rsa.RSAPublicKey] = {}
    for consumer_key, path in security.clients.items():
        public_key = load_certificate(path).public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise CertificateError("not_rsa", f"the signing certificate of {consumer_key!r}")
        signing_keys[consumer_key] = public_key
    pas_certificate = load_certificate(security.pas_encryption_certificate)
    pas_key = load_private_key(security.pas_decryption_key)
    check_key_matches_certificate(pas_key, pas_certificate)
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
    )


def secured_hooks(
    material: SecurityMaterial,
    *,
    clock: Callable[[], float],
    logger: EventLogger | None = None,
) -> tuple[JweCodec, OAuth1Gateway]:
    """The JWE codec and the OAuth 1.0a gateway; ``clock`` gives Unix seconds."""
    decrypter = JweDecrypter(material.pas_decryption_key, expected_kid=material.pas_kid)
    certificate = material.client_encryption_certificate
    encrypter = None if certificate is None else JweEncrypter(certificate)
    verifier = OAuth1Verifier(
        material.client_signing_keys,
        clock=clock,
        max_skew_seconds=material.max_skew_seconds,
        signature_methods=material.signature_methods,
    )
    return JweCodec(decrypter, encrypter), OAuth1Gateway(verifier, logger=logger)
