"""``points-adjuster check``: the settings are valid; now probe every dependency.

One line per check. URLs are printed through :func:`~service.redact.redact_url` (no password,
no secret query parameter); every topic of :func:`~service.tools.topics.service_topics` gets
its own line."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from service.errors import PointsAdjusterError
from service.idempotency.factory import open_store
from service.kafka.clients import list_topics
from service.pas.client import http_timeout
from service.pas.credentials import load_credentials
from service.redact import redact_in_text, redact_url
from service.settings import Settings
from service.tools.topics import service_topics


async def run_checks(settings: Settings) -> int:
    """Print one line per check; return 0 when all pass, 1 otherwise."""
    results: list[tuple[str, bool, str]] = [("settings", True, "valid")]
    try:
        credentials = load_credentials(settings.pas, now=datetime.now(UTC))
    except PointsAdjusterError as exc:
        results.append(("pas credentials", False, str(exc)))
    else:
        results.append(
            (
                "pas credentials",
                True,
                f"signing key, encryption certificate (kid"
                f" {credentials.encrypter.kid[:12]}...) and decryption key load and match",
            )
        )
        results.extend(("certificate expiry", True, f"WARNING {w}") for w in credentials.warnings)

    k = settings.kafka
    try:
        topics = await list_topics(k)
    except PointsAdjusterError as exc:
        results.append(("kafka", False, str(exc)))
    else:
        results.append(("kafka", True, f"reached {k.bootstrap_servers}"))
        for name in service_topics(k):
            present = name in topics
            hint = "" if present else " (create it: points-adjuster topics)"
            results.append((f"topic {name}", present, ("exists" if present else "missing") + hint))

    url = settings.pas.base_url + settings.pas.adjustment_path
    shown_url = redact_url(url)
    try:
        async with httpx.AsyncClient(timeout=http_timeout(settings.pas)) as client:
            response = await client.request("HEAD", url)
        results.append(("pas", True, f"{shown_url} answered HTTP {response.status_code}"))
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        error = redact_in_text(str(exc), url)
        results.append(
            (
                "pas",
                False,
                f"{shown_url}: {type(exc).__name__} {error} (setting PA_PAS__BASE_URL)",
            )
        )

    results.append(await _check_store(settings))

    width = max(len(name) for name, _, _ in results)
    for name, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'}  {name.ljust(width)}  {detail}")
    return 0 if all(ok for _, ok, _ in results) else 1


async def _check_store(settings: Settings) -> tuple[str, bool, str]:
    """The store opens and says whether it is new; a missing file is not created here."""
    idempotency = settings.idempotency
    if idempotency.kind == "memory":
        return ("idempotency store", True, "memory: in memory (not durable, tests only)")
    if idempotency.kind == "sqlite" and not idempotency.sqlite_file.exists():
        return (
            "idempotency store",
            True,
            f"sqlite: {idempotency.sqlite_file} does not exist yet; the first start creates it"
            " (refused then if the consumer group already has committed offsets)",
        )
    try:
        store = await open_store(idempotency, exclusive=False)
    except PointsAdjusterError as exc:
        return ("idempotency store", False, str(exc))
    try:
        state = "new, not yet used" if store.created else "in use"
        await store.probe()
        return (
            "idempotency store",
            True,
            f"{idempotency.where} (identity {store.identity}, {state})",
        )
    except PointsAdjusterError as exc:
        return ("idempotency store", False, str(exc))
    finally:
        await store.close()
