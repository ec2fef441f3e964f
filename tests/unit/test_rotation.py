"""Rotating the PAS credentials without a restart: the holder, its fallback key, its triggers."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
from pathlib import Path

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from pa_devkit.keys import DEV_P12_PASSWORD, DevKeySet, generate_dev_keyset
from service.pas.credentials import Credentials, load_credentials
from service.pas.jwe_codec import JweBodyCodec
from service.pas.rotation import CredentialStore, file_signature, watch_credentials
from service.security.errors import DecryptionError
from service.security.jwe import JweEncrypter, wrap_payload
from service.security.keys import load_certificate
from service.settings import PasSettings

# An hour after collection: this module is imported when the session starts, and the
# certificates its tests make (during the session, perhaps many minutes later) are valid from
# 5 minutes before they are made; read at import time, they would not be valid yet.
NOW = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
PASSWORD = DEV_P12_PASSWORD


@pytest.fixture(scope="module")
def keyset_b(tmp_path_factory: pytest.TempPathFactory) -> DevKeySet:
    """A second key set: every key new."""
    return generate_dev_keyset(tmp_path_factory.mktemp("keys-b"))


@pytest.fixture(scope="module")
def keyset_c(tmp_path_factory: pytest.TempPathFactory) -> DevKeySet:
    return generate_dev_keyset(tmp_path_factory.mktemp("keys-c"))


def install(keyset: DevKeySet, live: Path) -> None:
    """Put ``keyset``'s client-side files where the service reads them (new inodes)."""
    live.mkdir(exist_ok=True)
    for source in (
        keyset.client_signing_p12,
        keyset.pas_encryption_certificate,
        keyset.client_decryption_key,
    ):
        staged = live / f".{source.name}.new"
        shutil.copyfile(source, staged)
        staged.replace(live / source.name)


def live_settings(live: Path) -> PasSettings:
    return PasSettings.model_validate(
        {
            "consumer_key": "consumer-1",
            "signing_key_path": live / "client-signing.p12",
            "signing_key_password": PASSWORD,
            "encryption_certificate_path": live / "pas-encryption.crt.pem",
            "decryption_key_path": live / "client-decryption.key.pem",
        }
    )


def store_on(
    keyset: DevKeySet, live: Path, reloaded: list[Credentials] | None = None
) -> CredentialStore:
    install(keyset, live)
    settings = live_settings(live)
    return CredentialStore(
        settings,
        load_credentials(settings, now=NOW),
        clock=lambda: NOW,
        on_reload=None if reloaded is None else reloaded.append,
    )


def answer_to(keyset: DevKeySet, document: dict[str, object]) -> str:
    """A JWE answer as PAS sends it, encrypted to ``keyset``'s response certificate."""
    encrypter = JweEncrypter(load_certificate(keyset.client_decryption_certificate))
    return encrypter.encrypt(json.dumps(document).encode())


def test_reload_swaps_every_key_and_logs_their_fingerprints_only(
    dev_keyset: DevKeySet, keyset_b: DevKeySet, tmp_path: Path
) -> None:
    """After the files are replaced, reload() puts the new signing key, PAS certificate (new
    kid) and decryption key in force, calls on_reload once, and logs credentials.reloaded
    with the kid and fingerprints, never key material or the password."""
    reloaded: list[Credentials] = []
    store = store_on(dev_keyset, tmp_path, reloaded)
    before = store.current
    install(keyset_b, tmp_path)
    with capture_logs() as logs:
        assert store.reload("signal")
    after = store.current
    assert after is not before
    assert (
        after.encrypter.kid
        == JweEncrypter(load_certificate(keyset_b.pas_encryption_certificate)).kid
    )
    assert after.signing_fingerprint != before.signing_fingerprint
    assert after.decryption_fingerprint != before.decryption_fingerprint
    assert reloaded == [after]
    [event] = [e for e in logs if e["event"] == "credentials.reloaded"]
    assert event["trigger"] == "signal"
    assert event["changed"] == ["decryption_fingerprint", "encryption_kid", "signing_fingerprint"]
    assert event["encryption_kid"] == after.encrypter.kid
    assert event["previous_decryption_keys"] == 1
    text = repr(logs)
    assert PASSWORD not in text
    assert "PRIVATE KEY" not in text
    assert "consumer-1" not in text


def test_a_bad_file_keeps_the_old_credentials_and_reports_one_error(
    dev_keyset: DevKeySet, tmp_path: Path
) -> None:
    """A replaced file that does not load (here a certificate that is not one) leaves the
    credentials in force untouched; one credentials.reload_failed names the setting and the
    file, and on_reload is not called."""
    reloaded: list[Credentials] = []
    store = store_on(dev_keyset, tmp_path, reloaded)
    before = store.current
    (tmp_path / "pas-encryption.crt.pem").write_text("not a certificate\n")
    with capture_logs() as logs:
        assert not store.reload("files_changed")
    assert store.current is before
    assert reloaded == []
    [event] = logs
    assert event["event"] == "credentials.reload_failed"
    assert event["log_level"] == "error"
    assert "PA_PAS__ENCRYPTION_CERTIFICATE_PATH" in event["error"]
    assert str(tmp_path / "pas-encryption.crt.pem") in event["error"]


def test_a_wrong_password_keeps_the_old_and_never_shows_the_password(
    dev_keyset: DevKeySet, tmp_path: Path
) -> None:
    """A PKCS#12 file that its password no longer opens fails the reload naming the
    password setting, never the password; the old signing key stays in force."""
    before = store_on(dev_keyset, tmp_path).current
    settings = live_settings(tmp_path).model_copy(
        update={"signing_key_password": SecretStr("wrong-secret-123")}
    )
    store = CredentialStore(settings, before, clock=lambda: NOW)
    with capture_logs() as logs:
        assert not store.reload()
    assert store.current is before
    [event] = logs
    assert "PA_PAS__SIGNING_KEY_PASSWORD" in event["error"]
    assert "wrong-secret-123" not in repr(logs)


def test_answers_to_the_previous_decryption_key_still_decrypt(
    dev_keyset: DevKeySet, keyset_b: DevKeySet, keyset_c: DevKeySet, tmp_path: Path
) -> None:
    """After a rotation, an answer encrypted to the replaced key decrypts (N=1 old key kept),
    through the body codec as well; a reload that leaves the key as it is keeps the old one
    too; after a second rotation the oldest key is gone and its answers fail with the
    current key's error."""
    store = store_on(dev_keyset, tmp_path)
    install(keyset_b, tmp_path)
    assert store.reload()
    assert store.decrypt(answer_to(dev_keyset, {"n": 1})) == b'{"n": 1}'
    assert store.decrypt(answer_to(keyset_b, {"n": 2})) == b'{"n": 2}'
    codec = JweBodyCodec(store.current.encrypter, store, "encryptedValue")
    body = json.dumps(wrap_payload(answer_to(dev_keyset, {"pointsAdjusted": 5}))).encode()
    assert codec.decode(body) == {"pointsAdjusted": 5}

    assert store.reload()  # the same files again
    assert store.decryption_keys == 2
    assert store.decrypt(answer_to(dev_keyset, {"n": 3})) == b'{"n": 3}'

    install(keyset_c, tmp_path)
    assert store.reload()
    assert store.decryption_keys == 2
    assert store.decrypt(answer_to(keyset_b, {"n": 4})) == b'{"n": 4}'
    with pytest.raises(DecryptionError) as caught:
        store.decrypt(answer_to(dev_keyset, {"n": 5}))
    assert caught.value.reason == "key_unwrap_failed"


def test_the_file_signature_follows_a_symlink_swap(dev_keyset: DevKeySet, tmp_path: Path) -> None:
    """A Kubernetes Secret changes by swapping the ..data symlink: the signature of the path
    (mtime, size, inode of what it resolves to) changes though the path itself does not."""
    first, second = tmp_path / "v1", tmp_path / "v2"
    first.mkdir()
    second.mkdir()
    shutil.copyfile(dev_keyset.pas_encryption_certificate, first / "cert.pem")
    shutil.copyfile(dev_keyset.pas_encryption_certificate, second / "cert.pem")
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "cert.pem").symlink_to("..data/cert.pem")
    paths = (tmp_path / "cert.pem",)
    before = file_signature(paths)
    (tmp_path / "..data_tmp").symlink_to("v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert file_signature(paths) != before
    assert file_signature((tmp_path / "absent",)) == (None,)


async def test_the_watcher_reloads_on_a_file_change_and_on_a_signal(
    dev_keyset: DevKeySet, keyset_b: DevKeySet, tmp_path: Path
) -> None:
    """With polling on, replacing the files reloads them (trigger files_changed); setting
    the SIGHUP event reloads at once (trigger signal); stop ends the loop."""
    store = store_on(dev_keyset, tmp_path)
    requested, stop = asyncio.Event(), asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(
            watch_credentials(store, live_settings(tmp_path), requested, stop, poll_s=0.02)
        )
        await asyncio.sleep(0.05)
        install(keyset_b, tmp_path)
        for _ in range(100):
            if store.decryption_keys == 2:
                break
            await asyncio.sleep(0.02)
        requested.set()
        for _ in range(100):
            if not requested.is_set():
                break
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 5)
    triggers = [e["trigger"] for e in logs if e["event"] == "credentials.reloaded"]
    assert triggers == ["files_changed", "signal"]


async def test_with_polling_off_only_the_signal_reloads(
    dev_keyset: DevKeySet, keyset_b: DevKeySet, tmp_path: Path
) -> None:
    """PA_PAS__CREDENTIALS_POLL_S=0: a changed file is not noticed; SIGHUP still reloads."""
    store = store_on(dev_keyset, tmp_path)
    before = store.current
    requested, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        watch_credentials(store, live_settings(tmp_path), requested, stop, poll_s=0)
    )
    install(keyset_b, tmp_path)
    await asyncio.sleep(0.1)
    assert store.current is before
    requested.set()
    for _ in range(100):
        if store.current is not before:
            break
        await asyncio.sleep(0.02)
    assert store.current is not before
    stop.set()
    await asyncio.wait_for(task, 5)
