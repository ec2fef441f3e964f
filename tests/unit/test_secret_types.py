"""Every secret the service reads stays a secret type: no repr, str or error shows it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydantic import SecretStr

from pa_devkit.keys import DevKeySet, generate_dev_keyset
from service.pas.credentials import load_credentials
from service.settings import IdempotencySettings, PasSettings, Settings

# An hour after collection: this module is imported when the session starts, and the
# certificates its tests make (during the session, perhaps many minutes later) are valid from
# 5 minutes before they are made; read at import time, they would not be valid yet.
NOW = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
CONSUMER_KEY = "ck-distinctive-3f9a"
P12_PASSWORD = "p12-distinctive-7c1e"
KEY_PASSWORD = "keypw-distinctive-41d0"
STORE_PASSWORD = "store-distinctive-9b22"


def test_settings_hold_secrets_that_repr_hides(tmp_path: Path) -> None:
    """The consumer key and the key passwords are SecretStr in the settings tree, and the
    store password comes out of its file as one: no repr or str of them shows the value."""
    store_file = tmp_path / "store-password"
    store_file.write_text(STORE_PASSWORD + "\n")
    settings = Settings(
        pas=PasSettings(
            consumer_key=CONSUMER_KEY,
            signing_key_password=P12_PASSWORD,
            decryption_key_password=KEY_PASSWORD,
        ),
        idempotency=IdempotencySettings(dsn="redis://cache:6379/0", password_file=store_file),
    )
    password = settings.idempotency.password()
    assert isinstance(password, SecretStr)
    assert password.get_secret_value() == STORE_PASSWORD
    shown = "\n".join(
        [repr(settings), str(settings), repr(settings.model_dump()), repr(password), str(password)]
    )
    for secret in (CONSUMER_KEY, P12_PASSWORD, KEY_PASSWORD, STORE_PASSWORD):
        assert secret not in shown


def test_loaded_credentials_keep_the_consumer_key_secret(tmp_path: Path) -> None:
    """After loading, the signer holds the consumer key as a SecretStr: the credentials'
    repr does not show it, nor the PKCS#12 password; the header still carries the key."""
    keyset: DevKeySet = generate_dev_keyset(tmp_path / "keys", p12_password=P12_PASSWORD)
    key_file = tmp_path / "consumer-key"
    key_file.write_text(CONSUMER_KEY + "\n")
    credentials = load_credentials(
        PasSettings(
            consumer_key_file=key_file,
            signing_key_path=keyset.client_signing_p12,
            signing_key_password=P12_PASSWORD,
            encryption_certificate_path=keyset.pas_encryption_certificate,
            decryption_key_path=keyset.client_decryption_key,
        ),
        now=NOW,
    )
    assert isinstance(credentials.signer.consumer_key, SecretStr)
    shown = repr(credentials) + repr(vars(credentials.signer))
    assert CONSUMER_KEY not in shown
    assert P12_PASSWORD not in shown
    params = credentials.signer.oauth_params("POST", "https://pas.example/x", b"{}")
    assert params["oauth_consumer_key"] == CONSUMER_KEY
