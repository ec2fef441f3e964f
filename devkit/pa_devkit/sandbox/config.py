"""Settings of the PAS sandbox.

Every choice the contract marks [ours] (limits, allowed type codes, the path prefix) is a
field here, so tests and the demo can tighten or loosen the sandbox without code changes.
:class:`SandboxSecurity` turns on the gateway's OAuth 1.0a check and JWE bodies,
:class:`SandboxTls` serves https (and can require a client certificate); the
fault-injection settings live in :mod:`pa_devkit.sandbox.faults`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from pa_devkit.keys import DevKeySet
from pa_devkit.sandbox.faults import FaultConfig
from service.security.oauth1 import SIGNATURE_METHODS, SignatureMethod

DEFAULT_MAX_POINTS = 1_000_000
DEFAULT_TYPE_CODES: frozenset[str] = frozenset({"GOODWILL", "CORRECTION", "PROMO", "REVERSAL"})
DEFAULT_MAX_BODY_BYTES = 64 * 1024

DEFAULT_MAX_SKEW_SECONDS = 300

TYPE_CODE_PATTERN = re.compile(r"[A-Z0-9_]{1,20}")
"""The shape every ``adjustmentTypeCode`` must have, before the allowed-set check."""


@dataclass(frozen=True, slots=True)
class SandboxSecurity:
    """The key material of a sandbox that checks signatures and speaks JWE, as PAS does.

    Only paths: the files are read when the app is built
    (:func:`pa_devkit.sandbox.security.load_security_material`).

    Attributes:
        clients: consumer key -> that client's signing certificate (PEM or DER); the
            gateway accepts a call signed by the certificate's key under that consumer key.
        pas_decryption_key: PAS's private key; request JWEs are decrypted with it.
        pas_encryption_certificate: the certificate clients encrypt to; only JWEs whose
            ``kid`` is this certificate's fingerprint are accepted.
        client_encryption_certificate: when set, 200 answers are encrypted to it; else
            they are plain JSON.
        max_skew_seconds: how far ``oauth_timestamp`` may be from the sandbox's clock.
        signature_methods: the ``oauth_signature_method`` values the gateway accepts; both
            of Mastercard's (``RSA-SHA256``, ``RSA-PSS``) by default.
        previous_clients: during a key rotation, a second signing certificate per consumer
            key; a call signed by either key is accepted.
        previous_pas_keys: during a rotation of PAS's encryption key, older (private key,
            certificate) pairs; a request JWE whose ``kid`` is one of their certificates'
            is decrypted with that key.
    """

    clients: Mapping[str, Path]
    pas_decryption_key: Path
    pas_encryption_certificate: Path
    client_encryption_certificate: Path | None = None
    max_skew_seconds: int = DEFAULT_MAX_SKEW_SECONDS
    signature_methods: Collection[SignatureMethod] = frozenset(SIGNATURE_METHODS)
    previous_clients: Mapping[str, Path] = field(default_factory=dict)
    previous_pas_keys: tuple[tuple[Path, Path], ...] = ()

    def __post_init__(self) -> None:
        if not self.clients:
            raise ValueError("clients must register at least one consumer key")
        if any(not key for key in self.clients):
            raise ValueError("clients must not hold an empty consumer key")
        object.__setattr__(
            self, "clients", MappingProxyType({k: Path(v) for k, v in self.clients.items()})
        )
        if self.max_skew_seconds < 1:
            raise ValueError(f"max_skew_seconds must be at least 1, got {self.max_skew_seconds}")
        methods = frozenset(self.signature_methods)
        if not methods or not methods <= frozenset(SIGNATURE_METHODS):
            raise ValueError(
                f"signature_methods must be some of {', '.join(SIGNATURE_METHODS)},"
                f" got {sorted(methods)}"
            )
        object.__setattr__(self, "signature_methods", methods)
        unknown = sorted(set(self.previous_clients) - set(self.clients))
        if unknown:
            raise ValueError(f"previous_clients names unregistered consumer keys: {unknown}")
        object.__setattr__(
            self,
            "previous_clients",
            MappingProxyType({k: Path(v) for k, v in self.previous_clients.items()}),
        )

    def with_previous(self, previous: DevKeySet, consumer_key: str) -> SandboxSecurity:
        """This security, also trusting ``previous``'s signing certificate (under
        ``consumer_key``) and decrypting requests to ``previous``'s PAS key: both sides of a
        key rotation at once. Answers still go to this one's client certificate."""
        return replace(
            self,
            previous_clients={consumer_key: previous.client_signing_certificate},
            previous_pas_keys=((previous.pas_decryption_key, previous.pas_encryption_certificate),),
        )

    @classmethod
    def from_keyset(
        cls,
        keyset: DevKeySet,
        consumer_key: str,
        *,
        encrypt_responses: bool = True,
        signature_methods: Collection[SignatureMethod] = SIGNATURE_METHODS,
    ) -> SandboxSecurity:
        """The sandbox side of a dev key set from ``generate_dev_keyset``.

        ``consumer_key`` is registered with the client signing certificate; answers are
        encrypted to the client decryption certificate unless ``encrypt_responses`` is false.
        """
        return cls(
            clients={consumer_key: keyset.client_signing_certificate},
            pas_decryption_key=keyset.pas_decryption_key,
            pas_encryption_certificate=keyset.pas_encryption_certificate,
            client_encryption_certificate=(
                keyset.client_decryption_certificate if encrypt_responses else None
            ),
            signature_methods=signature_methods,
        )


@dataclass(frozen=True, slots=True)
class SandboxTls:
    """https for the sandbox: TLS 1.2 or later, with these PEM files (read at start-up).

    Attributes:
        certificate: the server certificate (its chain after it), for the host names the
            clients use.
        key: its private key (not encrypted).
        client_ca: when set, every client must present a certificate issued by one of
            these CAs (mutual TLS); a client without one is refused in the handshake.
    """

    certificate: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """How the sandbox listens and which requests it accepts.

    Attributes:
        host: interface to bind.
        port: TCP port; 0 asks the OS for a free one (read it back from the running
            sandbox's ``base_url``).
        latency_ms: fixed delay added before a valid adjustment is applied, unless
            ``faults.latency`` sets a distribution.
        max_points: largest accepted absolute value of ``pointsToAdjust``.
        allowed_type_codes: the ``adjustmentTypeCode`` values PAS accepts.
        unknown_accounts: account numbers answered with 404 ``ACCOUNT_NOT_FOUND``; every
            other well-formed account is treated as existing.
        max_body_bytes: request bodies larger than this are answered with 413.
        path_prefix: prepended to the PAS paths, ``""`` or e.g. ``"/loyalty"`` (no trailing
            slash). The admin routes under ``/_sandbox/`` are never prefixed.
        security: OAuth 1.0a and JWE as PAS requires them; ``None`` is plain mode (no
            signature, plain JSON bodies).
        tls: serve https (and maybe require client certificates); ``None`` serves plain
            http, which the service accepts only with ``PA_PAS__ALLOW_PLAIN_HTTP=true``.
        faults: the faults injected at start-up (replaceable at run time through
            ``/_sandbox/faults``); none by default.
    """

    host: str = "127.0.0.1"
    port: int = 8081
    latency_ms: float = 0
    max_points: int = DEFAULT_MAX_POINTS
    allowed_type_codes: frozenset[str] = DEFAULT_TYPE_CODES
    unknown_accounts: frozenset[str] = field(default_factory=frozenset)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    path_prefix: str = ""
    security: SandboxSecurity | None = None
    tls: SandboxTls | None = None
    faults: FaultConfig = field(default_factory=FaultConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be within 0..65535, got {self.port}")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must not be negative, got {self.latency_ms}")
        if self.max_points < 1:
            raise ValueError(f"max_points must be positive, got {self.max_points}")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, got {self.max_body_bytes}")
        if not self.allowed_type_codes:
            raise ValueError("allowed_type_codes must not be empty")
        malformed = sorted(c for c in self.allowed_type_codes if not TYPE_CODE_PATTERN.fullmatch(c))
        if malformed:
            raise ValueError(f"allowed_type_codes must match [A-Z0-9_]{{1,20}}: {malformed}")
        prefix = self.path_prefix
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise ValueError(
                f"path_prefix must be empty or start with '/' and not end with '/', got {prefix!r}"
            )
        if prefix == "/_sandbox" or prefix.startswith("/_sandbox/"):
            raise ValueError("path_prefix must not shadow the /_sandbox admin routes")
