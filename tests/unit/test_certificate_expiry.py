"""The certificate expiry gauge: which certificates it reports, and its countdown."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from pathlib import Path

import pytest
from cryptography import x509

from pa_devkit.keys import DEV_P12_PASSWORD, DevKeySet
from pa_devkit.tls import DevTlsSet, generate_dev_tls
from service.metrics import Metrics
from service.pas.credentials import load_credentials
from service.pas.expiry import certificate_expiry, report_certificate_expiry
from service.pas.tls import load_pas_tls
from service.settings import PasSettings

# An hour after collection: this module is imported when the session starts, and the
# certificates its tests make (during the session, perhaps many minutes later) are valid from
# 5 minutes before they are made; read at import time, they would not be valid yet.
NOW = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)


def not_after(path: Path) -> dt.datetime:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> DevTlsSet:
    return generate_dev_tls(tmp_path_factory.mktemp("tls"))


def test_every_loaded_certificate_is_reported_by_its_label(
    dev_keyset: DevKeySet, tls: DevTlsSet
) -> None:
    """The signing certificate (in the PKCS#12 file), Mastercard's encryption certificate,
    the response-encryption certificate and the mutual-TLS client certificate each have
    their expiry, under a bounded label."""
    pas = PasSettings.model_validate(
        {
            "consumer_key": "ck",
            "signing_key_path": dev_keyset.client_signing_p12,
            "signing_key_password": DEV_P12_PASSWORD,
            "encryption_certificate_path": dev_keyset.pas_encryption_certificate,
            "decryption_key_path": dev_keyset.client_decryption_key,
            "decryption_certificate_path": dev_keyset.client_decryption_certificate,
            "client_cert_file": tls.client_certificate,
            "client_key_file": tls.client_key,
        }
    )
    expiry = certificate_expiry(load_credentials(pas, now=NOW), load_pas_tls(pas, now=NOW))
    assert set(expiry) == {"signing", "pas_encryption", "decryption", "tls_client"}
    assert expiry["pas_encryption"] == not_after(dev_keyset.pas_encryption_certificate)
    assert expiry["decryption"] == not_after(dev_keyset.client_decryption_certificate)
    assert expiry["tls_client"] == not_after(tls.client_certificate)
    assert expiry["signing"] > NOW


def test_without_a_client_certificate_there_is_no_tls_series(dev_keyset: DevKeySet) -> None:
    """No PA_PAS__CLIENT_CERT_FILE: no tls_client series (rather than a made-up value)."""
    pas = PasSettings.model_validate(
        {
            "consumer_key": "ck",
            "signing_key_path": dev_keyset.client_signing_p12,
            "signing_key_password": DEV_P12_PASSWORD,
            "encryption_certificate_path": dev_keyset.pas_encryption_certificate,
            "decryption_key_path": dev_keyset.client_decryption_key,
        }
    )
    expiry = certificate_expiry(load_credentials(pas, now=NOW), load_pas_tls(pas, now=NOW))
    assert "tls_client" not in expiry
    assert "pas_encryption" in expiry


def test_the_gauge_holds_the_seconds_left() -> None:
    """set_certificate_expiry writes not_after minus now, in seconds, per certificate."""
    metrics = Metrics()
    metrics.set_certificate_expiry(
        {"pas_encryption": NOW + dt.timedelta(days=10), "signing": NOW - dt.timedelta(hours=1)},
        NOW,
    )
    value = metrics.registry.get_sample_value
    name = "points_adjuster_certificate_expiry_seconds"
    assert value(name, {"certificate": "pas_encryption"}) == 10 * 86400
    assert value(name, {"certificate": "signing"}) == -3600


async def test_the_report_counts_down_until_stopped() -> None:
    """The report runs at once, then every interval with the clock's time, and once more
    when stopped; it returns when ``stop`` is set."""
    seen: list[dt.datetime] = []
    times = iter(NOW + dt.timedelta(minutes=m) for m in range(100))
    stop = asyncio.Event()

    def report(expiry: Mapping[str, dt.datetime], now: dt.datetime) -> None:
        seen.append(now)
        if len(seen) == 3:
            stop.set()

    expiry = {"pas_encryption": NOW + dt.timedelta(days=1)}
    await asyncio.wait_for(
        report_certificate_expiry(expiry, report, stop, clock=lambda: next(times), interval_s=0.01),
        5,
    )
    assert seen == [NOW, NOW + dt.timedelta(minutes=1), NOW + dt.timedelta(minutes=2)]
