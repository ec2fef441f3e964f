"""Secure listeners of the local broker: SASL_SSL with SCRAM users, and SSL with client
certificates required (mutual TLS).

Both are added beside the PLAINTEXT listener (which stays the inter-broker one) when a
``LocalKafka`` is given ``secure=SecureListeners(...)``; the default broker has none. The TLS
material is a ``pa_devkit.tls.DevTlsSet``: the broker presents its server certificate (PEM
keystore, key and chain in one file) and trusts its CA for client certificates (PEM
truststore). Both secure listeners are advertised as ``localhost`` (``ADVERTISED_HOST``), so
a certificate issued for ``localhost`` only lets a test reach the same listener through
127.0.0.1 and meet a host name mismatch.

SCRAM users (SCRAM-SHA-512 and SCRAM-SHA-256 credentials each) are written into the metadata
log when the storage is formatted (``kafka.tools.StorageTool format --add-scram``), so they
exist from the broker's first second.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pa_devkit.localinfra.broker_config import HOST
from pa_devkit.tls import DevTlsSet

ADVERTISED_HOST = "localhost"
SASL_LISTENER = "SASL_SSL"
MTLS_LISTENER = "MTLS"
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
KEYSTORE = "broker-keystore.pem"
_SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule required;"


@dataclass
class SecureListeners:
    """What the secure listeners need; their ports are chosen at the broker's first start
    (0) or given."""

    tls: DevTlsSet
    scram_users: Mapping[str, str] = field(default_factory=dict)
    """user name -> password; letters, digits, ``-``, ``_`` and ``.`` only."""
    sasl_port: int = 0
    mtls_port: int = 0

    def __post_init__(self) -> None:
        for name, password in self.scram_users.items():
            for text in (name, password):
                if not text or not all(c.isalnum() or c in "-_." for c in text):
                    raise ValueError(
                        f"SCRAM user names and passwords: [A-Za-z0-9._-]+, not {text!r}"
                    )

    @property
    def sasl_bootstrap(self) -> str:
        """``localhost:<port>`` of the SASL_SSL listener."""
        return f"{ADVERTISED_HOST}:{self.sasl_port}"

    @property
    def mtls_bootstrap(self) -> str:
        """``localhost:<port>`` of the mutual-TLS listener."""
        return f"{ADVERTISED_HOST}:{self.mtls_port}"

    def format_arguments(self) -> list[str]:
        """The storage tool's ``--add-scram`` arguments, one per user and mechanism."""
        arguments: list[str] = []
        for name, password in self.scram_users.items():
            for mechanism in MECHANISMS:
                arguments += ["--add-scram", f"{mechanism}=[name={name},password={password}]"]
        return arguments

    def properties(self, *, port: int, controller_port: int, data_dir: Path) -> dict[str, str]:
        """server.properties entries that add both listeners (they replace the listener
        lists of ``render_server_properties``); writes the PEM keystore into ``data_dir``."""
        keystore = data_dir / KEYSTORE
        keystore.write_bytes(
            self.tls.server_key.read_bytes() + self.tls.server_certificate.read_bytes()
        )
        keystore.chmod(0o600)
        sasl, mtls = SASL_LISTENER.lower(), MTLS_LISTENER.lower()
        properties = {
            "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port},"
            f"{SASL_LISTENER}://{HOST}:{self.sasl_port},{MTLS_LISTENER}://{HOST}:{self.mtls_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{port},"
            f"{SASL_LISTENER}://{ADVERTISED_HOST}:{self.sasl_port},"
            f"{MTLS_LISTENER}://{ADVERTISED_HOST}:{self.mtls_port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,"
            f"{SASL_LISTENER}:SASL_SSL,{MTLS_LISTENER}:SSL",
            "sasl.enabled.mechanisms": ",".join(MECHANISMS),
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.tls.ca_certificate),
            f"listener.name.{mtls}.ssl.client.auth": "required",
        }
        for mechanism in MECHANISMS:
            properties[f"listener.name.{sasl}.{mechanism.lower()}.sasl.jaas.config"] = _SCRAM_LOGIN
        return properties
