"""Key and certificate loading, fingerprints, expiry checks and the dev key set."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pa_devkit.keys import (
    DevKeySet,
    generate_dev_keyset,
    generate_rsa_key,
    make_self_signed_certificate,
)
from service.security.errors import CertificateError, KeyLoadError
from service.security.keys import (
    CertificateStatus,
    check_certificate_validity,
    check_key_matches_certificate,
    kid_for_certificate,
    load_certificate,
    load_key_and_certificate,
    load_private_key,
)

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)
P12_PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def keyset(tmp_path_factory: pytest.TempPathFactory) -> DevKeySet:
    return generate_dev_keyset(tmp_path_factory.mktemp("keys") / "dev", p12_password=P12_PASSWORD)


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return generate_rsa_key()


def _cert(
    key: rsa.RSAPrivateKey, not_before: dt.datetime, not_after: dt.datetime
) -> x509.Certificate:
    return make_self_signed_certificate(key, "test", not_before=not_before, not_after=not_after)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- the dev key set -----------------------------------------------------------------------


def test_dev_keyset_files_all_load_and_pair_up(keyset: DevKeySet) -> None:
    """Every file of a generated key set loads, and each private key matches its certificate."""
    signing = load_key_and_certificate(keyset.client_signing_p12, password=P12_PASSWORD)
    signing_cert = load_certificate(keyset.client_signing_certificate)
    assert signing.certificate == signing_cert
    check_key_matches_certificate(signing.private_key, signing_cert)

    client_key = load_private_key(keyset.client_decryption_key)
    check_key_matches_certificate(
        client_key, load_certificate(keyset.client_decryption_certificate)
    )

    pas_key = load_private_key(keyset.pas_decryption_key)
    check_key_matches_certificate(pas_key, load_certificate(keyset.pas_encryption_certificate))

    kids = {
        kid_for_certificate(load_certificate(path))
        for path in (
            keyset.client_signing_certificate,
            keyset.client_decryption_certificate,
            keyset.pas_encryption_certificate,
        )
    }
    assert len(kids) == 3
    assert signing.private_key.key_size == 2048


def test_dev_keyset_private_keys_are_owner_only(keyset: DevKeySet) -> None:
    """The p12 and PEM private keys are written with mode 0600."""
    for path in (
        keyset.client_signing_p12,
        keyset.client_decryption_key,
        keyset.pas_decryption_key,
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_dev_keyset_certificates_are_valid_for_the_requested_days(tmp_path: Path) -> None:
    """The certificates run from (about) now for the given number of days."""
    ks = generate_dev_keyset(tmp_path, days=10, now=NOW)
    cert = load_certificate(ks.pas_encryption_certificate)
    assert cert.not_valid_before_utc <= NOW
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=10)
    status = check_certificate_validity(cert, now=NOW)
    assert status.status is CertificateStatus.EXPIRING_SOON


def test_dev_keyset_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    """A second run into the same directory fails untouched; ``overwrite=True`` replaces the set."""
    first = generate_dev_keyset(tmp_path)
    before = first.pas_encryption_certificate.read_bytes()
    with pytest.raises(FileExistsError, match="pas-encryption"):
        generate_dev_keyset(tmp_path)
    assert first.pas_encryption_certificate.read_bytes() == before

    second = generate_dev_keyset(tmp_path, overwrite=True)
    assert second.pas_encryption_certificate.read_bytes() != before
    assert stat.S_IMODE(second.pas_decryption_key.stat().st_mode) == 0o600


# --- loading errors ------------------------------------------------------------------------


def test_wrong_p12_password_is_a_key_load_error(keyset: DevKeySet) -> None:
    """A wrong PKCS#12 password raises ``KeyLoadError('wrong_password')`` naming the file."""
    with pytest.raises(KeyLoadError) as info:
        load_private_key(keyset.client_signing_p12, password="not it")
    assert info.value.reason == "wrong_password"
    assert info.value.path == keyset.client_signing_p12


def test_p12_without_password_asks_for_one(keyset: DevKeySet) -> None:
    """Opening a protected PKCS#12 without a password says a password is required."""
    with pytest.raises(KeyLoadError) as info:
        load_private_key(keyset.client_signing_p12)
    assert info.value.reason == "password_required"


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    """A missing key file raises ``KeyLoadError('not_found')`` whose message names the path."""
    missing = tmp_path / "nowhere" / "signing.p12"
    with pytest.raises(KeyLoadError) as info:
        load_private_key(missing, password="x")
    assert info.value.reason == "not_found"
    assert str(missing) in str(info.value)


def test_directory_is_unreadable(tmp_path: Path) -> None:
    """A path that cannot be read as a file raises ``KeyLoadError('unreadable')``."""
    with pytest.raises(KeyLoadError) as info:
        load_certificate(tmp_path)
    assert info.value.reason == "unreadable"


def test_certificate_is_not_a_key(keyset: DevKeySet) -> None:
    """Loading a certificate file as a private key raises ``KeyLoadError('not_a_key')``."""
    with pytest.raises(KeyLoadError) as info:
        load_private_key(keyset.pas_encryption_certificate)
    assert info.value.reason == "not_a_key"


def test_garbage_is_neither_key_nor_certificate(tmp_path: Path) -> None:
    """Random bytes are reported as not a key and not a certificate."""
    path = _write(tmp_path / "junk.bin", b"\x01\x02 definitely not DER")
    with pytest.raises(KeyLoadError, match="not_a_key"):
        load_private_key(path)
    with pytest.raises(KeyLoadError, match="not_a_certificate"):
        load_certificate(path)


def test_encrypted_pem_key_round_trip_and_errors(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    """An encrypted PEM loads with its password; no or wrong password give clear reasons."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret"),
    )
    path = _write(tmp_path / "key.pem", pem)
    loaded = load_private_key(path, password="s3cret")
    assert loaded.private_numbers() == key.private_numbers()

    with pytest.raises(KeyLoadError) as wrong:
        load_private_key(path, password="nope")
    assert wrong.value.reason == "wrong_password"
    assert "PRIVATE KEY" not in str(wrong.value)
    with pytest.raises(KeyLoadError) as missing:
        load_private_key(path)
    assert missing.value.reason == "password_required"


def test_small_rsa_key_is_refused(tmp_path: Path) -> None:
    """Keys under 2048 bits are refused."""
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = small.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(KeyLoadError, match="key_too_small"):
        load_private_key(_write(tmp_path / "small.pem", pem))


def test_pem_with_key_and_certificate_yields_both(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    """From a PEM bundle holding a foreign certificate too, the key's own certificate is picked."""
    other = _cert(generate_rsa_key(), NOW, NOW + dt.timedelta(days=1))
    own = _cert(key, NOW, NOW + dt.timedelta(days=1))
    bundle = b"".join(
        [
            other.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            ),
            own.public_bytes(serialization.Encoding.PEM),
        ]
    )
    loaded = load_key_and_certificate(_write(tmp_path / "bundle.pem", bundle))
    assert loaded.certificate == own


def test_der_certificate_loads(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    """A DER certificate loads like its PEM form."""
    cert = _cert(key, NOW, NOW + dt.timedelta(days=1))
    path = _write(tmp_path / "cert.der", cert.public_bytes(serialization.Encoding.DER))
    assert load_certificate(path) == cert


# --- checks --------------------------------------------------------------------------------


def test_key_certificate_mismatch_is_detected(key: rsa.RSAPrivateKey) -> None:
    """A certificate of another key raises ``CertificateError('key_mismatch')``."""
    foreign = _cert(generate_rsa_key(), NOW, NOW + dt.timedelta(days=1))
    check_key_matches_certificate(key, _cert(key, NOW, NOW + dt.timedelta(days=1)))
    with pytest.raises(CertificateError) as info:
        check_key_matches_certificate(key, foreign)
    assert info.value.reason == "key_mismatch"


def test_expired_certificate_is_an_error_with_not_after(key: rsa.RSAPrivateKey) -> None:
    """A certificate past its not_after raises ``CertificateError('expired')`` carrying it."""
    not_after = NOW - dt.timedelta(seconds=1)
    cert = _cert(key, NOW - dt.timedelta(days=30), not_after)
    with pytest.raises(CertificateError) as info:
        check_certificate_validity(cert, now=NOW)
    assert info.value.reason == "expired"
    assert info.value.not_after == not_after


def test_not_yet_valid_certificate_is_an_error(key: rsa.RSAPrivateKey) -> None:
    """A certificate whose validity starts in the future raises ``not_yet_valid``."""
    cert = _cert(key, NOW + dt.timedelta(days=1), NOW + dt.timedelta(days=30))
    with pytest.raises(CertificateError, match="not_yet_valid"):
        check_certificate_validity(cert, now=NOW)


def test_near_expiry_is_a_warning_value(key: rsa.RSAPrivateKey) -> None:
    """Inside the warning window the check returns EXPIRING_SOON with not_after and time left."""
    not_after = NOW + dt.timedelta(days=29)
    cert = _cert(key, NOW - dt.timedelta(days=300), not_after)
    status = check_certificate_validity(cert, now=NOW)
    assert status.status is CertificateStatus.EXPIRING_SOON
    assert status.expiring_soon
    assert status.not_after == not_after
    assert status.remaining == dt.timedelta(days=29)
    assert check_certificate_validity(cert, now=NOW, warn_within_days=7).status is (
        CertificateStatus.VALID
    )


def test_comfortably_valid_certificate_is_valid(key: rsa.RSAPrivateKey) -> None:
    """Outside the warning window the status is VALID."""
    cert = _cert(key, NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=365))
    assert check_certificate_validity(cert, now=NOW).status is CertificateStatus.VALID


def test_kid_is_stable_lowercase_hex_sha256_of_spki(key: rsa.RSAPrivateKey) -> None:
    """The kid is the lowercase hex SHA-256 of the SPKI, equal for every certificate of a key."""
    first = _cert(key, NOW, NOW + dt.timedelta(days=1))
    second = _cert(key, NOW - dt.timedelta(days=9), NOW + dt.timedelta(days=90))
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    kid = kid_for_certificate(first)
    assert re.fullmatch(r"[0-9a-f]{64}", kid)
    assert kid == hashlib.sha256(spki).hexdigest()
    assert kid_for_certificate(second) == kid
    assert kid_for_certificate(first) == kid
    assert kid_for_certificate(_cert(generate_rsa_key(), NOW, NOW + dt.timedelta(days=1))) != kid
