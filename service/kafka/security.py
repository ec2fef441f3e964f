"""How the Kafka clients authenticate and encrypt: the settings turned into aiokafka's options.

:func:`client_security` is the one place the ``PA_KAFKA__SECURITY_PROTOCOL`` block becomes
keyword arguments; every client the service and its tools build (producers, the transactional
producer, consumers, admin clients) takes them, so ``check``, ``topics``, ``send`` and ``dlq``
reach the brokers exactly as the service does.

- ``SSL`` / ``SASL_SSL``: one ``ssl.SSLContext``, TLS 1.2 at least, the chain always verified
  against ``PA_KAFKA__SSL_CA_FILE`` (certifi's bundle when unset), the host name checked
  unless ``PA_KAFKA__SSL_CHECK_HOSTNAME=false``; mutual TLS with ``PA_KAFKA__SSL_CERT_FILE``.
- ``SASL_*``: the mechanism, the user name and the password read from
  ``PA_KAFKA__SASL_PASSWORD_FILE`` when the client is built. The password is held as a
  ``SecretStr`` until it is handed to aiokafka and is never put in a message.

aiokafka reports a failed bootstrap as "Unable to bootstrap from [...]" and logs the cause
only. :func:`diagnose` connects once more, alone, to learn that cause, and :func:`explain`
turns it into one sentence and the setting to check (an untrusted CA, a certificate that does
not name the host, a refused client certificate, a wrong password).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import certifi
from aiokafka.conn import create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest
from pydantic import SecretStr

from service.errors import StartupError
from service.settings import KafkaSettings

MIN_TLS_VERSION = ssl.TLSVersion.TLSv1_2
COMPONENT = "Kafka security"
PROBE_TIMEOUT_S = 5.0
"""Longest wait for the diagnosing connection (its TLS handshake, SASL and one request)."""

_HOST_MISMATCH = frozenset({62, 64})  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
_REFUSED_OUR_CERTIFICATE = ("CERTIFICATE", "UNKNOWN_CA", "ACCESS_DENIED", "BAD_CERTIFICATE")


def client_security(settings: KafkaSettings) -> dict[str, Any]:
    """aiokafka's security keyword arguments for ``settings``; ``StartupError`` naming the
    setting when a file cannot be read or used."""
    protocol = settings.security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol.endswith("SSL"):
        options["ssl_context"] = _ssl_context(settings)
    if protocol.startswith("SASL_"):
        assert settings.sasl_password_file is not None  # the settings' own rule
        password = SecretStr(
            _read(settings.sasl_password_file, "PA_KAFKA__SASL_PASSWORD_FILE").decode()
        )
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = password.get_secret_value()
    return options


def _ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    ca = settings.ssl_ca_file
    if ca is not None:
        _read(ca, "PA_KAFKA__SSL_CA_FILE")
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca else certifi.where())
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(
            COMPONENT,
            f"{ca}: no PEM certificate in it ({_ssl_reason(exc)})",
            setting="PA_KAFKA__SSL_CA_FILE",
        ) from None
    context.minimum_version = MIN_TLS_VERSION
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = settings.ssl_check_hostname
    if settings.ssl_cert_file is not None:
        _load_client_certificate(context, settings)
    return context


def _load_client_certificate(context: ssl.SSLContext, settings: KafkaSettings) -> None:
    cert = settings.ssl_cert_file
    assert cert is not None
    key = settings.ssl_key_file or cert
    key_setting = "PA_KAFKA__SSL_KEY_FILE" if settings.ssl_key_file else "PA_KAFKA__SSL_CERT_FILE"
    _read(cert, "PA_KAFKA__SSL_CERT_FILE")
    key_data = _read(key, key_setting)
    password: bytes | None = None
    if settings.ssl_key_password_file is not None:
        password = (
            _read(settings.ssl_key_password_file, "PA_KAFKA__SSL_KEY_PASSWORD_FILE").rstrip(b"\r\n")
            or None
        )
    asked: list[bool] = []

    def no_password() -> bytes:
        # OpenSSL asks only for an encrypted key; without this it would prompt on the terminal.
        asked.append(True)
        return b""

    try:
        context.load_cert_chain(cert, key, password=password or no_password)
    except (OSError, ssl.SSLError) as exc:
        if asked:
            raise StartupError(
                COMPONENT,
                f"{key}: the key is encrypted and no password is set",
                setting="PA_KAFKA__SSL_KEY_PASSWORD_FILE",
            ) from None
        if password is not None and b"ENCRYPTED" in key_data:
            raise StartupError(
                COMPONENT,
                f"{key}: wrong password (in {settings.ssl_key_password_file}), or not its key",
                setting="PA_KAFKA__SSL_KEY_PASSWORD_FILE",
            ) from None
        raise StartupError(
            COMPONENT,
            f"the client certificate {cert} and its key {key} are refused by OpenSSL"
            f" ({_ssl_reason(exc)})",
            setting=key_setting,
        ) from None


def _read(path: Path, setting: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StartupError(
            COMPONENT, f"cannot read {path}: {exc.strerror or exc}", setting=setting
        ) from None
    if setting.endswith("PASSWORD_FILE"):
        data = data.removesuffix(b"\n").removesuffix(b"\r")
        if not data:
            raise StartupError(COMPONENT, f"{path} is empty", setting=setting)
    return data


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(exc, ssl.SSLError) and reason:
        return str(reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


# --- failures at start-up ------------------------------------------------------------------


@dataclass(frozen=True)
class SecurityFailure:
    """Why a broker refused us, in one sentence, and the setting most likely at fault."""

    server: str
    text: str
    setting: str


def explain(exc: BaseException, settings: KafkaSettings, server: str) -> SecurityFailure | None:
    """The security failure in ``exc``'s chain, or ``None`` when it is something else."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = _explain_one(current, settings)
        if found is not None:
            return SecurityFailure(server, *found)
        current = current.__cause__ or current.__context__
    return None


def _explain_one(exc: BaseException, settings: KafkaSettings) -> tuple[str, str] | None:
    if isinstance(exc, ssl.SSLError):
        return _explain_tls(exc, settings)
    if isinstance(exc, SaslAuthenticationFailed | IllegalSaslStateError):
        return (
            f"SASL {settings.sasl_mechanism} authentication of user {settings.sasl_username!r}"
            " failed (wrong user name or password)",
            "PA_KAFKA__SASL_PASSWORD_FILE",
        )
    if isinstance(exc, UnsupportedSaslMechanismError):
        return (
            f"the broker does not accept SASL {settings.sasl_mechanism} on this listener",
            "PA_KAFKA__SASL_MECHANISM",
        )
    return None


def _explain_tls(exc: ssl.SSLError, settings: KafkaSettings) -> tuple[str, str]:
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = getattr(exc, "verify_message", None) or str(exc)
        if getattr(exc, "verify_code", None) in _HOST_MISMATCH:
            return (
                f"TLS certificate does not name this host ({message})",
                "PA_KAFKA__BOOTSTRAP_SERVERS",
            )
        return f"TLS certificate not trusted ({message})", "PA_KAFKA__SSL_CA_FILE"
    reason = str(getattr(exc, "reason", None) or exc)
    if "ALERT" in reason and any(word in reason for word in _REFUSED_OUR_CERTIFICATE):
        if settings.ssl_cert_file is None:
            return f"the broker wants a client certificate ({reason})", "PA_KAFKA__SSL_CERT_FILE"
        return f"the broker refused our client certificate ({reason})", "PA_KAFKA__SSL_CERT_FILE"
    if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return (
            f"the broker does not speak TLS on this port ({reason})",
            "PA_KAFKA__SECURITY_PROTOCOL",
        )
    return f"TLS failed ({reason})", "PA_KAFKA__SECURITY_PROTOCOL"


async def diagnose(
    settings: KafkaSettings, *, timeout_s: float = PROBE_TIMEOUT_S
) -> SecurityFailure | None:
    """Connect to each bootstrap server alone, as the clients do, and explain the first
    security failure met; ``None`` when every server answers or fails for another reason."""
    if settings.security_protocol == "PLAINTEXT":
        return None
    security = client_security(settings)
    for server in (part.strip() for part in settings.bootstrap_servers.split(",")):
        host, _, port = server.rpartition(":")
        try:
            async with asyncio.timeout(timeout_s):
                conn = await create_conn(
                    host.strip("[]"),
                    int(port),
                    client_id=f"{settings.client_id}-diagnosis",
                    request_timeout_ms=int(timeout_s * 1000),
                    **security,
                )
                try:
                    # Under TLS 1.3 a broker refuses a client certificate (or its absence)
                    # after the handshake: the first request meets its alert.
                    await conn.send(MetadataRequest([]))
                finally:
                    conn.close()
        except (KafkaError, OSError, TimeoutError) as exc:
            failure = explain(exc, settings, server)
            if failure is not None:
                return failure
    return None


async def start_failure(
    settings: KafkaSettings, what: str, exc: BaseException
) -> StartupError | None:
    """The ``StartupError`` naming the setting to check when ``exc`` (a client failing to
    start) came from TLS or SASL; ``None`` otherwise."""
    failure = explain(exc, settings, settings.bootstrap_servers)
    if failure is None:
        failure = await diagnose(settings)
    if failure is None:
        return None
    return StartupError(
        f"Kafka {what}", f"Kafka at {failure.server}: {failure.text}", setting=failure.setting
    )
