"""The broker's configuration: server.properties, its cluster id, the java to run, free ports.

Everything here is for one broker+controller node on loopback (``HOST``).
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path

from pa_devkit.localinfra.errors import LocalKafkaError

HOST = "127.0.0.1"


# --- configuration -------------------------------------------------------------------------


def new_cluster_id() -> str:
    """A random cluster id: 16 bytes as 22 base64url characters, never starting with '-'."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not text.startswith("-"):  # it would be read as an option by the storage tool
            return text


def render_server_properties(
    *,
    port: int,
    controller_port: int,
    log_dirs: Path,
    extra: Mapping[str, str] | None = None,
) -> str:
    """The broker+controller configuration of a one-node cluster on 127.0.0.1."""
    properties: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "log.dirs": str(log_dirs),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "auto.create.topics.enable": "true",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }
    properties.update(extra or {})
    lines = [
        "# Written by devkit/pa_devkit/localinfra/broker_config.py on every start; edits are lost."
    ]
    lines.extend(f"{key}={_escape_property(value)}" for key, value in properties.items())
    return "\n".join(lines) + "\n"


def _escape_property(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"a property value cannot span lines: {value!r}")
    return value.replace("\\", "\\\\")


def read_properties(path: Path) -> dict[str, str]:
    """The key=value lines of a simple Java properties file (comments skipped)."""
    result: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        result[key.strip()] = value.strip().replace("\\\\", "\\")
    return result


def _port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def find_java() -> str:
    """The java executable: $JAVA_HOME/bin/java, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME", "").strip()
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise LocalKafkaError(
            "java is not on PATH (and JAVA_HOME does not point at a JDK): Kafka 4.x needs "
            "Java 17 or newer (Debian: apt-get install openjdk-17-jre-headless)."
        )
    return found


# --- ports -----------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:port (sockets in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def port_accepts(port: int, timeout: float = 0.5) -> bool:
    """Whether 127.0.0.1:port accepts a TCP connection."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False
