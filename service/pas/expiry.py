"""How long each loaded PAS certificate has left: the certificate expiry gauge.

Start-up refuses an expired certificate and warns within ``PA_PAS__CERTIFICATE_WARNING_DAYS``;
a service that then runs for weeks reports the countdown instead, refreshed every minute, so
the ``CertificateExpiringSoon`` alert sees the deadline coming without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from datetime import datetime

from service.pas.credentials import Credentials
from service.pas.tls import PasTls

REFRESH_S = 60.0
"""How often the gauge is set again (it counts down between start-ups)."""


def certificate_expiry(credentials: Credentials, tls: PasTls) -> dict[str, datetime]:
    """When each loaded certificate expires, by its label: the credentials' own (signing,
    pas_encryption, decryption) and the mutual-TLS client certificate (tls_client), if any."""
    expiry = dict(credentials.expiry)
    if tls.client_certificate_expiry is not None:
        expiry["tls_client"] = tls.client_certificate_expiry
    return expiry


async def report_certificate_expiry(
    expiry: Mapping[str, datetime],
    report: Callable[[Mapping[str, datetime], datetime], None],
    stop: asyncio.Event,
    *,
    clock: Callable[[], datetime],
    interval_s: float = REFRESH_S,
) -> None:
    """Call ``report(expiry, clock())`` now and every ``interval_s`` until ``stop`` is set."""
    report(expiry, clock())
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        report(expiry, clock())
