"""End to end over a secured broker: the service and its tools over SASL_SSL (SCRAM) and over
mutual TLS, and the one-line start-up errors of a wrong password, an untrusted CA, a wrong
host name and a missing client certificate.

The broker is one of this module's own (``own_broker`` with ``SecureListeners``), beside the
session's plain one; its certificate names ``localhost`` only, so reaching a secure listener
through 127.0.0.1 is a host name mismatch. Topics are created over its PLAINTEXT listener.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pa_devkit.keys import DevKeySet
from pa_devkit.localinfra.kafka import LocalKafka
from pa_devkit.localinfra.secure import SecureListeners
from pa_devkit.sandbox import run_sandbox
from pa_devkit.tls import DevTlsSet, generate_dev_tls
from service.codec.avro import AvroCodec
from service.settings import KafkaSettings
from service.tools.generate import generate_commands
from service.tools.send import send_commands
from tests.e2e.harness import (
    ServiceProcess,
    Topology,
    originals_per_key,
    secure_sandbox,
    wait_for_originals,
)
from tests.kafka_support import create_topics, own_broker

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(300)]

USER, PASSWORD = "points-adjuster", "scram-Pw-4711"
FAILURE_BUDGET_S = 10.0


@dataclass(frozen=True)
class SecureBroker:
    broker: LocalKafka
    listeners: SecureListeners
    tls: DevTlsSet
    stranger: DevTlsSet
    """Another CA's set: its CA does not vouch for the broker, nor the broker's for its client."""
    password_file: Path
    wrong_password_file: Path

    def sasl_env(self) -> dict[str, str]:
        return {
            "PA_KAFKA__BOOTSTRAP_SERVERS": self.listeners.sasl_bootstrap,
            "PA_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "PA_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
            "PA_KAFKA__SASL_USERNAME": USER,
            "PA_KAFKA__SASL_PASSWORD_FILE": str(self.password_file),
            "PA_KAFKA__SSL_CA_FILE": str(self.tls.ca_certificate),
        }

    def mtls_env(self) -> dict[str, str]:
        return {
            "PA_KAFKA__BOOTSTRAP_SERVERS": self.listeners.mtls_bootstrap,
            "PA_KAFKA__SECURITY_PROTOCOL": "SSL",
            "PA_KAFKA__SSL_CA_FILE": str(self.tls.ca_certificate),
            "PA_KAFKA__SSL_CERT_FILE": str(self.tls.client_certificate),
            "PA_KAFKA__SSL_KEY_FILE": str(self.tls.client_key),
        }


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    base = tmp_path_factory.mktemp("kafka-security")
    tls = generate_dev_tls(base / "tls", hosts=("localhost",))
    stranger = generate_dev_tls(base / "stranger", hosts=("localhost",))
    password_file = base / "sasl-password"
    password_file.write_text(PASSWORD + "\n", encoding="utf-8")
    wrong = base / "wrong-password"
    wrong.write_text("not-the-password\n", encoding="utf-8")
    listeners = SecureListeners(tls, {USER: PASSWORD})
    with own_broker(secure=listeners) as broker:
        yield SecureBroker(broker, listeners, tls, stranger, password_file, wrong)


def _settings(topology: Topology, env: dict[str, str]) -> KafkaSettings:
    """The topology's Kafka settings reached through ``env``'s listener and security."""
    values = topology.kafka.model_dump()
    values.update({key.removeprefix("PA_KAFKA__").lower(): value for key, value in env.items()})
    return KafkaSettings.model_validate(values)


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def test_the_service_and_its_tools_work_over_sasl_ssl_with_scram(
    secure_broker: SecureBroker, tmp_path: Path, dev_keyset: DevKeySet
) -> None:
    """Over SASL_SSL with SCRAM-SHA-512: `topics` creates the topics, `check` reaches the
    broker, `send` publishes commands, the service applies each exactly once and its outcome
    events are read back, all through the secure listener; the password is never printed."""
    topology = Topology(secure_broker.broker.bootstrap_servers)
    async with run_sandbox(secure_sandbox(dev_keyset, latency_ms=1)) as sandbox:
        service = ServiceProcess(
            topology, sandbox.base_url, tmp_path, dev_keyset, **secure_broker.sasl_env()
        )
        code, output = await _cli(service.env, "topics", "--partitions", "2")
        assert code == 0, output
        code, output = await _cli(service.env, "check")
        kafka_line = next(line for line in output.splitlines() if " kafka " in f"{line} ")
        assert kafka_line.startswith("ok"), output
        assert f"reached {secure_broker.listeners.sasl_bootstrap}" in output, output
        code, output = await _cli(service.env, "send", "--count", "20", "--seed", "3")
        assert code == 0, output
        await service.start()
        try:
            outcomes = await wait_for_originals(
                _settings(topology, secure_broker.sasl_env()), AvroCodec.from_directory(), 20, 120
            )
        finally:
            exit_code = await service.terminate()
    assert exit_code == 0, service.log_tail()
    assert len(originals_per_key(outcomes)) == 20
    assert all(count == 1 for count in originals_per_key(outcomes).values())
    log = service.log_path.read_text(errors="replace")
    assert PASSWORD not in log + output


async def test_the_service_works_over_mutual_tls(
    secure_broker: SecureBroker, tmp_path: Path, dev_keyset: DevKeySet
) -> None:
    """Over SSL with a client certificate (the listener requires one): commands sent through
    it are applied once each by the service, outcomes read back through it."""
    topology = Topology(secure_broker.broker.bootstrap_servers)
    await create_topics(topology.bootstrap, topology.topics(2))
    settings = _settings(topology, secure_broker.mtls_env())
    batch = generate_commands(15, accounts=6, seed=8)
    codec = AvroCodec.from_directory()
    async with run_sandbox(secure_sandbox(dev_keyset, latency_ms=1)) as sandbox:
        service = ServiceProcess(
            topology, sandbox.base_url, tmp_path, dev_keyset, **secure_broker.mtls_env()
        )
        await service.start()
        try:
            await send_commands(settings, batch.commands, codec=codec)
            outcomes = await wait_for_originals(settings, codec, batch.distinct_keys, 120)
        finally:
            exit_code = await service.terminate()
    assert exit_code == 0, service.log_tail()
    per_key = originals_per_key(outcomes)
    assert len(per_key) == batch.distinct_keys
    assert all(count == 1 for count in per_key.values())


def _wrong_password(b: SecureBroker) -> dict[str, str]:
    return {**b.sasl_env(), "PA_KAFKA__SASL_PASSWORD_FILE": str(b.wrong_password_file)}


def _untrusted_ca(b: SecureBroker) -> dict[str, str]:
    return {**b.sasl_env(), "PA_KAFKA__SSL_CA_FILE": str(b.stranger.ca_certificate)}


def _wrong_host(b: SecureBroker) -> dict[str, str]:
    return {**b.sasl_env(), "PA_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{b.listeners.sasl_port}"}


def _no_client_certificate(b: SecureBroker) -> dict[str, str]:
    env = b.mtls_env()
    del env["PA_KAFKA__SSL_CERT_FILE"], env["PA_KAFKA__SSL_KEY_FILE"]
    return env


def _stranger_certificate(b: SecureBroker) -> dict[str, str]:
    return {
        **b.mtls_env(),
        "PA_KAFKA__SSL_CERT_FILE": str(b.stranger.client_certificate),
        "PA_KAFKA__SSL_KEY_FILE": str(b.stranger.client_key),
    }


@pytest.mark.parametrize(
    ("make_env", "says", "setting"),
    [
        (_wrong_password, "authentication of user 'points-adjuster' failed", "SASL_PASSWORD_FILE"),
        (_untrusted_ca, "TLS certificate not trusted", "SSL_CA_FILE"),
        (_wrong_host, "TLS certificate does not name this host", "BOOTSTRAP_SERVERS"),
        (_no_client_certificate, "the broker wants a client certificate", "SSL_CERT_FILE"),
        (_stranger_certificate, "the broker refused our client certificate", "SSL_CERT_FILE"),
    ],
    ids=["wrong-password", "untrusted-ca", "wrong-host", "no-client-cert", "stranger-cert"],
)
async def test_a_refused_connection_ends_start_up_with_one_line_naming_the_setting(
    secure_broker: SecureBroker,
    tmp_path: Path,
    dev_keyset: DevKeySet,
    make_env: object,
    says: str,
    setting: str,
) -> None:
    """The service exits with code 2 within seconds (no retry loop, no wait for the start-up
    timeout), its last line saying what the broker refused and the setting to check, and no
    password in its output."""
    assert callable(make_env)
    topology = Topology(secure_broker.broker.bootstrap_servers)
    service = ServiceProcess(
        topology,
        "http://127.0.0.1:9",
        tmp_path,
        dev_keyset,
        PA_KAFKA__STARTUP_TIMEOUT_S="30",
        **make_env(secure_broker),
    )
    started = time.monotonic()
    code, output = await _cli(service.env, "run")
    elapsed = time.monotonic() - started
    last = output.strip().splitlines()[-1]
    assert code == 2, output
    assert elapsed < FAILURE_BUDGET_S, output
    assert last.startswith("points-adjuster: error: Kafka"), output
    assert says in last, output
    assert f"(setting PA_KAFKA__{setting})" in last, output
    assert PASSWORD not in output
    assert sum("points-adjuster: error" in line for line in output.splitlines()) == 1
