"""Start-up loading of the PAS credentials: clear, setting-naming errors; expiry warnings."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from pa_devkit.keys import (
    DEV_P12_PASSWORD,
    DevKeySet,
    generate_rsa_key,
    make_self_signed_certificate,
)
from service.errors import StartupError
from service.pas.credentials import load_credentials
from service.settings import PasSettings

NOW = dt.datetime.now(dt.UTC)


def settings_for(keyset: DevKeySet, **changes: object) -> PasSettings:
    values: dict[str, object] = {
        "consumer_key": "consumer-1",
        "signing_key_path": keyset.client_signing_p12,
        "signing_key_password": DEV_P12_PASSWORD,
        "encryption_certificate_path": keyset.pas_encryption_certificate,
        "decryption_key_path": keyset.client_decryption_key,
    }
    values.update(changes)
    return PasSettings.model_validate(values)


def write_cert(path: Path, days_left: float) -> Path:
    key = generate_rsa_key()
    cert = make_self_signed_certificate(
        key,
        "pas test",
        not_before=NOW - dt.timedelta(days=400),
        not_after=NOW + dt.timedelta(days=days_left),
        usage="encryption",
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_a_complete_key_set_loads(dev_keyset: DevKeySet) -> None:
    """The dev key set loads into a signer, an encrypter for PAS's kid and a decrypter."""
    credentials = load_credentials(settings_for(dev_keyset), now=NOW)
    assert credentials.signer.consumer_key.get_secret_value() == "consumer-1"
    assert len(credentials.encrypter.kid) == 64
    assert credentials.warnings == []


def test_consumer_key_can_come_from_a_file(dev_keyset: DevKeySet, tmp_path: Path) -> None:
    """A mounted secret file wins over the consumer key value, trailing newline stripped."""
    secret = tmp_path / "consumer-key"
    secret.write_text("from-file\n")
    settings = settings_for(dev_keyset, consumer_key_file=secret)
    assert load_credentials(settings, now=NOW).signer.consumer_key.get_secret_value() == "from-file"


def encrypted_decryption_key(keyset: DevKeySet, path: Path, password: str) -> Path:
    """The dev key set's decryption key written again as a password-protected PEM file."""
    key = serialization.load_pem_private_key(keyset.client_decryption_key.read_bytes(), None)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password.encode()),
        )
    )
    return path


def test_decryption_key_password_can_come_from_a_file(
    dev_keyset: DevKeySet, tmp_path: Path
) -> None:
    """A mounted password file opens an encrypted decryption key and wins over the value."""
    key = encrypted_decryption_key(dev_keyset, tmp_path / "decryption.key.pem", "pem-pass")
    secret = tmp_path / "decryption-key-password"
    secret.write_text("pem-pass\n")
    settings = settings_for(
        dev_keyset,
        decryption_key_path=key,
        decryption_key_password="not-this-one",
        decryption_key_password_file=secret,
    )
    assert load_credentials(settings, now=NOW).warnings == []


@pytest.mark.parametrize(
    ("content", "words"),
    [("wrong-pass\n", "wrong password"), ("\n", "no password is set")],
)
def test_a_bad_decryption_password_file_names_the_file_setting(
    dev_keyset: DevKeySet, tmp_path: Path, content: str, words: str
) -> None:
    """A wrong or empty password in the file is reported against the _FILE setting."""
    key = encrypted_decryption_key(dev_keyset, tmp_path / "decryption.key.pem", "pem-pass")
    secret = tmp_path / "decryption-key-password"
    secret.write_text(content)
    settings = settings_for(
        dev_keyset, decryption_key_path=key, decryption_key_password_file=secret
    )
    with pytest.raises(StartupError) as caught:
        load_credentials(settings, now=NOW)
    assert caught.value.setting == "PA_PAS__DECRYPTION_KEY_PASSWORD_FILE"
    assert words in str(caught.value)
    assert "wrong-pass" not in str(caught.value)


def test_a_missing_decryption_password_file_names_its_setting(
    dev_keyset: DevKeySet, tmp_path: Path
) -> None:
    """A password file that cannot be read stops start-up naming the file and its setting."""
    missing = tmp_path / "not-mounted"
    settings = settings_for(dev_keyset, decryption_key_password_file=missing)
    with pytest.raises(StartupError) as caught:
        load_credentials(settings, now=NOW)
    assert caught.value.setting == "PA_PAS__DECRYPTION_KEY_PASSWORD_FILE"
    assert str(missing) in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "setting", "words"),
    [
        ({"consumer_key": None}, "PA_PAS__CONSUMER_KEY", "no OAuth1 consumer key"),
        ({"signing_key_path": Path("/nonexistent/k.p12")}, "PA_PAS__SIGNING_KEY_PATH", "not found"),
        ({"signing_key_password": "wrong"}, "PA_PAS__SIGNING_KEY_PASSWORD", "wrong password"),
        ({"signing_key_password": None}, "PA_PAS__SIGNING_KEY_PASSWORD", "no password"),
        (
            {"encryption_certificate_path": Path("/nonexistent/c.pem")},
            "PA_PAS__ENCRYPTION_CERTIFICATE_PATH",
            "not found",
        ),
        (
            {"decryption_key_path": Path("/nonexistent/d.pem")},
            "PA_PAS__DECRYPTION_KEY_PATH",
            "not found",
        ),
    ],
)
def test_each_problem_names_its_setting(
    dev_keyset: DevKeySet, changes: dict[str, object], setting: str, words: str
) -> None:
    """Missing files, wrong or missing passwords and a missing consumer key name the setting."""
    with pytest.raises(StartupError) as caught:
        load_credentials(settings_for(dev_keyset, **changes), now=NOW)
    assert caught.value.setting == setting
    assert words in str(caught.value)


def test_a_certificate_file_that_is_not_a_certificate_is_refused(
    dev_keyset: DevKeySet,
) -> None:
    """A private key given where the PAS certificate belongs is refused, naming the setting."""
    settings = settings_for(dev_keyset, encryption_certificate_path=dev_keyset.pas_decryption_key)
    with pytest.raises(StartupError) as caught:
        load_credentials(settings, now=NOW)
    assert caught.value.setting == "PA_PAS__ENCRYPTION_CERTIFICATE_PATH"


def test_a_decryption_key_that_does_not_match_its_certificate_is_refused(
    dev_keyset: DevKeySet,
) -> None:
    """A decryption key that does not match the registered response certificate is refused."""
    settings = settings_for(
        dev_keyset, decryption_certificate_path=dev_keyset.pas_encryption_certificate
    )
    with pytest.raises(StartupError) as caught:
        load_credentials(settings, now=NOW)
    assert "does not match" in str(caught.value)
    assert caught.value.setting == "PA_PAS__DECRYPTION_CERTIFICATE_PATH"


def test_a_matching_decryption_certificate_is_accepted(dev_keyset: DevKeySet) -> None:
    """The decryption key and its own certificate pass the match check."""
    settings = settings_for(
        dev_keyset, decryption_certificate_path=dev_keyset.client_decryption_certificate
    )
    assert load_credentials(settings, now=NOW).warnings == []


def test_an_expired_pas_certificate_is_refused(dev_keyset: DevKeySet, tmp_path: Path) -> None:
    """An expired PAS encryption certificate stops start-up and says when it expired."""
    expired = write_cert(tmp_path / "expired.pem", days_left=-2)
    with pytest.raises(StartupError) as caught:
        load_credentials(settings_for(dev_keyset, encryption_certificate_path=expired), now=NOW)
    assert "expired" in str(caught.value)
    assert "not after" in str(caught.value)


def test_a_certificate_close_to_expiry_gives_a_warning(
    dev_keyset: DevKeySet, tmp_path: Path
) -> None:
    """A certificate expiring within 30 days loads, with a warning naming the setting."""
    soon = write_cert(tmp_path / "soon.pem", days_left=10)
    credentials = load_credentials(
        settings_for(dev_keyset, encryption_certificate_path=soon), now=NOW
    )
    (warning,) = credentials.warnings
    assert "PA_PAS__ENCRYPTION_CERTIFICATE_PATH" in warning
    assert "expires" in warning


def test_no_error_message_contains_key_material(dev_keyset: DevKeySet) -> None:
    """A wrong password error shows the path and the cause, never the password or key bytes."""
    with pytest.raises(StartupError) as caught:
        load_credentials(settings_for(dev_keyset, signing_key_password="s3cret-guess"), now=NOW)
    text = str(caught.value)
    assert "s3cret-guess" not in text
    assert "BEGIN" not in text
