"""The exception tree of ``service.security``: a branch of the tree drawn in ``service.errors``.

SecurityError                  base; ``retriable`` is always False (same input, same failure)
├── KeyLoadError               a key or certificate file cannot be loaded (``path``, ``reason``)
├── CertificateError           a certificate is unusable: expired, not yet valid, wrong key
└── DecryptionError            a JWE cannot be decrypted or fails its integrity check

Every error carries a stable, lowercase ``reason`` code meant for logs and metric labels, and
a ``detail`` sentence for humans. Neither ever holds key material, plaintext or a signature.

The product only signs: the verifier of signatures, and its ``SignatureError``, live in the
dev kit (``pa_devkit.oauth1_verifier``).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from service.errors import PointsAdjusterError


class SecurityError(PointsAdjusterError):
    """Base class of every error raised on purpose by ``service.security``."""

    retriable: bool = False

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class KeyLoadError(SecurityError):
    """A key or certificate file is missing, unreadable, locked by another password or not a key.

    Reasons: ``not_found``, ``unreadable``, ``password_required``, ``wrong_password``,
    ``unexpected_password``, ``not_a_key``, ``not_rsa``, ``key_too_small``,
    ``not_a_certificate``, ``no_certificate``.
    """

    def __init__(self, path: str | Path, reason: str, detail: str = "") -> None:
        self.path = Path(path)
        super().__init__(reason, f"{self.path}: {detail}" if detail else str(self.path))


class CertificateError(SecurityError):
    """A certificate cannot be used: ``expired``, ``not_yet_valid``, ``key_mismatch``, ...

    ``not_after`` is set when the problem is about the validity period.
    """

    def __init__(self, reason: str, detail: str = "", *, not_after: datetime | None = None) -> None:
        super().__init__(reason, detail)
        self.not_after = not_after


class DecryptionError(SecurityError):
    """A JWE is rejected; ``reason`` says which check failed.

    Reasons: ``not_five_parts``, ``bad_base64``, ``bad_header``, ``unsupported_algorithm``,
    ``kid_mismatch``, ``truncated``, ``bad_iv``, ``key_unwrap_failed``, ``tag_mismatch``,
    ``bad_envelope``. The codes are for our own logs and metrics; a server must not echo the
    difference between ``key_unwrap_failed`` and ``tag_mismatch`` to an untrusted caller.
    """
