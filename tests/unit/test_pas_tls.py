"""The TLS context of the PAS connection (service.pas.tls): what it enforces, what it trusts,
the client certificate it presents, and the start-up errors naming the setting at fault."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from pa_devkit.keys import DEV_P12_PASSWORD, DevKeySet
from pa_devkit.tls import DevTlsSet, generate_dev_tls
from service.app import load_pas_security
from service.errors import StartupError
from service.pas.tls import MIN_TLS_VERSION, load_pas_tls, tls_failure
from service.settings import PasSettings
from tests.conftest import CONSUMER_KEY

# An hour after collection: this module is imported when the session starts, and the
# certificates its tests make (during the session, perhaps many minutes later) are valid from
# 5 minutes before they are made; read at import time, they would not be valid yet.
NOW = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
PASSWORD = "client-key-pw"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> DevTlsSet:
    return generate_dev_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> DevTlsSet:
    """A set whose client key is encrypted with PASSWORD."""
    return generate_dev_tls(tmp_path_factory.mktemp("tls-locked"), client_key_password=PASSWORD)


def settings(**values: Any) -> PasSettings:
    return PasSettings.model_validate(values)


def refusal(pas: PasSettings, now: dt.datetime = NOW) -> StartupError:
    with pytest.raises(StartupError) as caught:
        load_pas_tls(pas, now=now)
    return caught.value


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_the_context_demands_tls_12_a_verified_chain_and_the_host_name() -> None:
    """Whatever the settings, the context refuses TLS below 1.2, verifies the chain and
    checks the host name; without a CA file it trusts certifi's bundle."""
    loaded = load_pas_tls(settings(), now=NOW)
    context = loaded.context
    assert MIN_TLS_VERSION is ssl.TLSVersion.TLSv1_2
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert loaded.trusted == "certifi's bundle"
    assert len(context.get_ca_certs()) > 50
    assert loaded.client_certificate is None
    assert loaded.warnings == []


def test_a_ca_file_replaces_the_default_bundle(tls: DevTlsSet) -> None:
    """With PA_PAS__CA_FILE the context trusts that bundle alone."""
    loaded = load_pas_tls(settings(ca_file=tls.ca_certificate), now=NOW)
    (ca,) = loaded.context.get_ca_certs()
    assert ca["subject"] == ((("commonName", "points-adjuster dev TLS CA"),),)
    assert loaded.trusted == str(tls.ca_certificate)


@pytest.mark.parametrize("content", [None, "not a certificate\n"], ids=["missing", "garbage"])
def test_an_unusable_ca_file_names_the_setting(tmp_path: Path, content: str | None) -> None:
    """A CA file that is missing or holds no certificate is a start-up error naming
    PA_PAS__CA_FILE and the file."""
    path = tmp_path / "ca.pem"
    if content is not None:
        write(path, content)
    error = refusal(settings(ca_file=path))
    assert error.setting == "PA_PAS__CA_FILE"
    assert str(path) in str(error)
    assert str(error).startswith("PAS TLS: ")


def test_a_client_certificate_and_key_are_presented(tls: DevTlsSet) -> None:
    """With a client certificate and its key the context carries them; the subject is
    reported for the start-up line."""
    loaded = load_pas_tls(
        settings(client_cert_file=tls.client_certificate, client_key_file=tls.client_key),
        now=NOW,
    )
    assert loaded.client_certificate == "CN=points-adjuster dev TLS client"


def test_the_key_may_sit_in_the_certificate_file(tls: DevTlsSet, tmp_path: Path) -> None:
    """Without PA_PAS__CLIENT_KEY_FILE the key is read from the certificate's file."""
    both = tmp_path / "client.pem"
    both.write_bytes(tls.client_certificate.read_bytes() + tls.client_key.read_bytes())
    loaded = load_pas_tls(settings(client_cert_file=both), now=NOW)
    assert loaded.client_certificate == "CN=points-adjuster dev TLS client"


def test_an_encrypted_key_opens_with_its_password_file(locked: DevTlsSet, tmp_path: Path) -> None:
    """An encrypted key opens with the password in PA_PAS__CLIENT_KEY_PASSWORD_FILE (a
    trailing newline, as a mounted secret often has, is not part of it)."""
    password_file = write(tmp_path / "password", PASSWORD + "\n")
    loaded = load_pas_tls(
        settings(
            client_cert_file=locked.client_certificate,
            client_key_file=locked.client_key,
            client_key_password_file=password_file,
        ),
        now=NOW,
    )
    assert loaded.client_certificate is not None


@pytest.mark.parametrize(
    ("password", "words"),
    [(None, "encrypted and no password"), ("wrong", "wrong password")],
    ids=["no-password", "wrong-password"],
)
def test_a_locked_key_without_its_password_names_the_password_file(
    locked: DevTlsSet, tmp_path: Path, password: str | None, words: str
) -> None:
    """An encrypted key with no password or the wrong one names the password file setting,
    never the password."""
    extra = (
        {} if password is None else {"client_key_password_file": write(tmp_path / "pw", password)}
    )
    error = refusal(
        settings(
            client_cert_file=locked.client_certificate, client_key_file=locked.client_key, **extra
        )
    )
    assert error.setting == "PA_PAS__CLIENT_KEY_PASSWORD_FILE"
    assert words in str(error)
    assert PASSWORD not in str(error)


def test_a_password_for_a_plain_key_names_the_password_file(tls: DevTlsSet, tmp_path: Path) -> None:
    """A password set for a key that is not encrypted is refused too (a mix-up of files)."""
    error = refusal(
        settings(
            client_cert_file=tls.client_certificate,
            client_key_file=tls.client_key,
            client_key_password_file=write(tmp_path / "pw", "something"),
        )
    )
    assert error.setting == "PA_PAS__CLIENT_KEY_PASSWORD_FILE"
    assert "not encrypted" in str(error)


def test_the_key_of_another_certificate_names_the_key_file(tls: DevTlsSet) -> None:
    """The server's key given with the client's certificate: refused, naming the key file."""
    error = refusal(
        settings(client_cert_file=tls.client_certificate, client_key_file=tls.server_key)
    )
    assert error.setting == "PA_PAS__CLIENT_KEY_FILE"
    assert "does not belong to the certificate" in str(error)


@pytest.mark.parametrize("which", ["certificate", "key"])
def test_an_unreadable_or_empty_file_names_its_setting(
    tls: DevTlsSet, tmp_path: Path, which: str
) -> None:
    """A client certificate or key file that is missing or holds no PEM names its setting."""
    garbage = write(tmp_path / "garbage.pem", "nothing to see\n")
    if which == "certificate":
        error = refusal(settings(client_cert_file=garbage, client_key_file=tls.client_key))
        assert error.setting == "PA_PAS__CLIENT_CERT_FILE"
        missing = refusal(settings(client_cert_file=tmp_path / "absent.pem"))
        assert missing.setting == "PA_PAS__CLIENT_CERT_FILE"
    else:
        error = refusal(settings(client_cert_file=tls.client_certificate, client_key_file=garbage))
        assert error.setting == "PA_PAS__CLIENT_KEY_FILE"
    assert str(garbage) in str(error)


def test_an_expired_client_certificate_is_refused_and_a_soon_expiring_one_warned(
    tmp_path: Path,
) -> None:
    """A client certificate past its end is a start-up error; one ending within
    PA_PAS__CERTIFICATE_WARNING_DAYS loads with a warning naming the setting."""
    old = generate_dev_tls(tmp_path / "old", days=1, now=NOW - dt.timedelta(days=3))
    error = refusal(
        settings(client_cert_file=old.client_certificate, client_key_file=old.client_key)
    )
    assert error.setting == "PA_PAS__CLIENT_CERT_FILE"
    assert "expired" in str(error)

    soon = generate_dev_tls(tmp_path / "soon", days=10)
    loaded = load_pas_tls(
        settings(client_cert_file=soon.client_certificate, client_key_file=soon.client_key),
        now=NOW,
    )
    (warning,) = loaded.warnings
    assert "TLS client certificate expires" in warning
    assert "PA_PAS__CLIENT_CERT_FILE" in warning


# --- tls_failure ---------------------------------------------------------------------------


def chained(inner: BaseException) -> Exception:
    """An HTTP client's error with the ssl error two links down, as httpx raises them."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise ConnectionError("connect failed") from exc
    except ConnectionError as exc:
        outer = RuntimeError("ConnectError")
        outer.__cause__ = exc
        return outer


def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    error.verify_code = code
    error.verify_message = message
    return error


def ssl_error(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()}")
    error.reason = reason
    return error


@pytest.mark.parametrize(
    ("inner", "text", "setting"),
    [
        (
            verify_error(20, "unable to get local issuer certificate"),
            "TLS: certificate verify failed: unable to get local issuer certificate",
            "PA_PAS__CA_FILE",
        ),
        (
            verify_error(62, "Hostname mismatch, certificate is not valid for 'pas.example'."),
            "TLS: certificate verify failed: Hostname mismatch, certificate is not valid for"
            " 'pas.example'.",
            "PA_PAS__BASE_URL",
        ),
        (
            ssl_error("TLSV13_ALERT_CERTIFICATE_REQUIRED"),
            "TLS: TLSV13_ALERT_CERTIFICATE_REQUIRED",
            "PA_PAS__CLIENT_CERT_FILE",
        ),
        (
            ssl_error("TLSV1_ALERT_UNKNOWN_CA"),
            "TLS: TLSV1_ALERT_UNKNOWN_CA",
            "PA_PAS__CLIENT_CERT_FILE",
        ),
        (ssl_error("UNSUPPORTED_PROTOCOL"), "TLS: UNSUPPORTED_PROTOCOL", "PA_PAS__BASE_URL"),
    ],
    ids=["untrusted", "host", "cert-required", "unknown-ca", "protocol"],
)
def test_a_tls_failure_deep_in_a_chain_is_one_sentence_and_a_setting(
    inner: BaseException, text: str, setting: str
) -> None:
    """tls_failure finds the ssl error under the HTTP client's exceptions and says what
    failed and which setting to look at."""
    failure = tls_failure(chained(inner))
    assert failure is not None
    assert (failure.text, failure.setting) == (text, setting)


def test_no_tls_failure_in_an_ordinary_error() -> None:
    """An error without an ssl error in its chain is not a TLS failure."""
    assert tls_failure(chained(ConnectionRefusedError(111, "refused"))) is None


# --- start-up ------------------------------------------------------------------------------


def key_settings(keyset: DevKeySet, **values: Any) -> PasSettings:
    return settings(
        consumer_key=CONSUMER_KEY,
        signing_key_path=keyset.client_signing_p12,
        signing_key_password=DEV_P12_PASSWORD,
        encryption_certificate_path=keyset.pas_encryption_certificate,
        decryption_key_path=keyset.client_decryption_key,
        **values,
    )


def test_plain_http_is_logged_as_a_warning_at_start_up(dev_keyset: DevKeySet) -> None:
    """Start-up loads the credentials and the TLS context; over plain http (allowed) it logs
    pas.plain_http as a warning, the URL's secrets hidden; over https it does not."""
    plain = key_settings(
        dev_keyset, base_url="http://127.0.0.1:8081?token=s3cret", allow_plain_http=True
    )
    with capture_logs() as logs:
        credentials, tls = load_pas_security(plain)
    assert credentials.signer.signature_method == "RSA-SHA256"
    assert tls.context.minimum_version is ssl.TLSVersion.TLSv1_2
    (warning,) = [entry for entry in logs if entry["event"] == "pas.plain_http"]
    assert warning["log_level"] == "warning"
    assert warning["pas"] == "http://127.0.0.1:8081?token=***"
    assert "development run against the sandbox only" in warning["detail"]

    with capture_logs() as logs:
        credentials, _ = load_pas_security(key_settings(dev_keyset, signature_method="RSA-PSS"))
    assert [entry for entry in logs if entry["event"] == "pas.plain_http"] == []
    assert credentials.signer.signature_method == "RSA-PSS"
