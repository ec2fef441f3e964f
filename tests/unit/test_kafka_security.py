"""The Kafka security settings: their rules, the client options they give, and how a refusal
at start-up is explained."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed

from pa_devkit.tls import generate_dev_tls
from service.errors import ConfigError, StartupError
from service.kafka.security import client_security, diagnose, explain
from service.settings import KafkaSettings, load_settings


def _kafka(**values: object) -> KafkaSettings:
    return load_settings(kafka=values).kafka


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "kafka-password"
    path.write_text("s3cret-pw\n", encoding="utf-8")
    return path


def test_plaintext_is_the_default_and_adds_no_tls_or_sasl() -> None:
    """Without settings the clients speak PLAINTEXT, with no context and no credentials."""
    assert client_security(KafkaSettings()) == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"security_protocol": "SASL_SSL"}, "PA_KAFKA__SASL_MECHANISM"),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512"},
            "PA_KAFKA__SASL_USERNAME",
        ),
        (
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_username": "u",
            },
            "PA_KAFKA__SASL_PASSWORD_FILE",
        ),
        ({"sasl_username": "u"}, "PA_KAFKA__SASL_USERNAME"),
        ({"ssl_ca_file": "/ca.pem"}, "PA_KAFKA__SSL_CA_FILE"),
        ({"security_protocol": "SSL", "ssl_key_file": "/k.pem"}, "PA_KAFKA__SSL_KEY_FILE"),
        (
            {"security_protocol": "SSL", "ssl_key_password_file": "/p"},
            "PA_KAFKA__SSL_KEY_PASSWORD_FILE",
        ),
        ({"security_protocol": "TLS"}, "PA_KAFKA__SECURITY_PROTOCOL"),
        ({"security_protocol": "SSL", "sasl_mechanism": "GSSAPI"}, "PA_KAFKA__SASL_MECHANISM"),
    ],
)
def test_an_incomplete_or_pointless_block_is_refused_naming_the_setting(
    values: dict[str, object], named: str
) -> None:
    """SASL_* needs its three settings; TLS and SASL settings with a protocol that does not
    use them are refused rather than silently ignored; the error names the setting."""
    with pytest.raises(ConfigError) as caught:
        _kafka(**values)
    assert caught.value.setting == named


def test_sasl_ssl_gives_the_credentials_and_a_verifying_context(
    tmp_path: Path, password_file: Path
) -> None:
    """SASL_SSL: mechanism, user, the file's password without its newline, and a context
    that verifies the chain and the host name, TLS 1.2 at least."""
    tls = generate_dev_tls(tmp_path / "tls")
    settings = _kafka(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password_file=str(password_file),
        ssl_ca_file=str(tls.ca_certificate),
    )
    options = client_security(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "svc"
    assert options["sasl_plain_password"] == "s3cret-pw"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert "s3cret" not in repr(settings)


def test_mutual_tls_loads_the_client_certificate_and_its_encrypted_key(tmp_path: Path) -> None:
    """SSL with a client certificate whose key is encrypted: loaded with the password from
    its file; hostname checking can be turned off, verification cannot."""
    tls = generate_dev_tls(tmp_path / "tls", client_key_password="key-pw")
    (tmp_path / "key-pw").write_text("key-pw\n", encoding="utf-8")
    settings = _kafka(
        security_protocol="SSL",
        ssl_ca_file=str(tls.ca_certificate),
        ssl_cert_file=str(tls.client_certificate),
        ssl_key_file=str(tls.client_key),
        ssl_key_password_file=str(tmp_path / "key-pw"),
        ssl_check_hostname=False,
    )
    context = client_security(settings)["ssl_context"]
    assert context.check_hostname is False
    assert context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize("password", [None, "wrong"])
def test_an_unusable_client_key_names_the_setting_and_never_prompts(
    tmp_path: Path, password: str | None
) -> None:
    """An encrypted key without its password, or with a wrong one, is a StartupError naming
    the password setting (OpenSSL never asks on the terminal)."""
    tls = generate_dev_tls(tmp_path / "tls", client_key_password="right")
    values: dict[str, object] = {
        "security_protocol": "SSL",
        "ssl_cert_file": str(tls.client_certificate),
        "ssl_key_file": str(tls.client_key),
    }
    if password is not None:
        (tmp_path / "pw").write_text(password, encoding="utf-8")
        values["ssl_key_password_file"] = str(tmp_path / "pw")
    with pytest.raises(StartupError) as caught:
        client_security(_kafka(**values))
    assert caught.value.setting == "PA_KAFKA__SSL_KEY_PASSWORD_FILE"
    assert "right" not in str(caught.value)


@pytest.mark.parametrize(
    ("setting", "content"),
    [
        ("PA_KAFKA__SASL_PASSWORD_FILE", None),
        ("PA_KAFKA__SASL_PASSWORD_FILE", "\n"),
        ("PA_KAFKA__SSL_CA_FILE", None),
        ("PA_KAFKA__SSL_CA_FILE", "not a certificate"),
    ],
)
def test_a_missing_or_unusable_file_is_a_startup_error_naming_the_setting(
    tmp_path: Path, password_file: Path, setting: str, content: str | None
) -> None:
    """A file that is missing, empty or holds no certificate: StartupError with its setting."""
    broken = tmp_path / "broken"
    if content is not None:
        broken.write_text(content, encoding="utf-8")
    values: dict[str, object] = {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_username": "svc",
        "sasl_password_file": str(password_file),
    }
    values[setting.removeprefix("PA_KAFKA__").lower()] = str(broken)
    with pytest.raises(StartupError) as caught:
        client_security(_kafka(**values))
    assert caught.value.setting == setting
    assert "s3cret" not in str(caught.value)


def test_a_failed_bootstrap_is_explained_by_the_cause_in_its_chain(password_file: Path) -> None:
    """An untrusted certificate, a name mismatch, a refused client certificate and a SASL
    refusal each name the setting to check; an unrelated failure is left alone."""
    settings = _kafka(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password_file=str(password_file),
    )

    def chained(cause: BaseException) -> KafkaConnectionError:
        outer = KafkaConnectionError("Unable to bootstrap from [('h', 1, 0)]")
        outer.__cause__ = cause
        return outer

    untrusted = ssl.SSLCertVerificationError(1, "certificate verify failed")
    untrusted.verify_code, untrusted.verify_message = 20, "unable to get local issuer certificate"
    mismatch = ssl.SSLCertVerificationError(1, "certificate verify failed")
    mismatch.verify_code, mismatch.verify_message = 64, "IP address mismatch"
    alert = ssl.SSLError(1, "alert")
    alert.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    cases: dict[str, BaseException] = {
        "PA_KAFKA__SSL_CA_FILE": untrusted,
        "PA_KAFKA__BOOTSTRAP_SERVERS": mismatch,
        "PA_KAFKA__SSL_CERT_FILE": alert,
        "PA_KAFKA__SASL_PASSWORD_FILE": SaslAuthenticationFailed("bad credentials"),
    }
    for setting, cause in cases.items():
        failure = explain(chained(cause), settings, "h:1")
        assert failure is not None
        assert failure.setting == setting
        assert "s3cret" not in failure.text
    assert explain(KafkaConnectionError("refused"), settings, "h:1") is None


async def test_diagnosis_is_skipped_for_plaintext() -> None:
    """PLAINTEXT has nothing to diagnose: no second connection is made."""
    assert await diagnose(KafkaSettings(bootstrap_servers="127.0.0.1:1")) is None
