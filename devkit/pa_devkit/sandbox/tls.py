"""The sandbox's https: the server ``ssl.SSLContext`` a :class:`SandboxTls` describes.

TLS 1.2 at least, as PAS's gateway; with ``client_ca`` the handshake requires a client
certificate issued by one of those CAs (mutual TLS). A file that cannot be used is a
``ValueError`` naming it, raised when the sandbox starts.
"""

from __future__ import annotations

import ssl

from pa_devkit.sandbox.config import SandboxTls


def server_ssl_context(tls: SandboxTls) -> ssl.SSLContext:
    """The server context of ``tls``; ``ValueError`` naming the file that cannot be used."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.certificate, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"TLS certificate {tls.certificate} with key {tls.key}: {_why(exc)}"
        ) from exc
    if tls.client_ca is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"TLS client CA {tls.client_ca}: {_why(exc)}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _why(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)
