"""``points-adjuster check``: the settings are valid; now probe every dependency.

One line per check. URLs are printed through :func:`~service.redact.redact_url` (no password,
no secret query parameter); every topic of :func:`~service.tools.topics.service_topics` gets
its own line. PAS is probed through the service's own HTTP client
(:func:`~service.pas.client.open_http_client`): the same transport, TLS context and
no-redirect rule as ``run``."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from service.codec.avro import COMMAND
from service.errors import PointsAdjusterError
from service.idempotency.factory import open_store
from service.kafka.clients import list_topics
from service.pas.bounded import describe
from service.pas.client import open_http_client
from service.pas.credentials import load_credentials
from service.pas.tls import PasTls, load_pas_tls, tls_failure
from service.redact import redact_in_text, redact_url
from service.registry.client import SchemaRegistryClient
from service.registry.subjects import subject_name
from service.settings import PasSettings, Settings
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
                f"signing key ({settings.pas.signature_method} signatures), encryption"
                f" certificate (kid {credentials.encrypter.kid[:12]}...) and decryption key"
                " load and match",
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

    try:
        tls = load_pas_tls(settings.pas, now=datetime.now(UTC))
    except PointsAdjusterError as exc:
        results.append(("pas tls", False, str(exc)))
        results.append(("pas", False, "not probed: the TLS settings above are unusable"))
    else:
        results.append(("pas tls", True, _tls_line(settings.pas, tls)))
        results.extend(("certificate expiry", True, f"WARNING {w}") for w in tls.warnings)
        results.append(await _probe_pas(settings.pas, tls))

    results.append(await _check_store(settings))
    if settings.schema_registry.url is not None:
        results.append(await _check_registry(settings))

    width = max(len(name) for name, _, _ in results)
    for name, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'}  {name.ljust(width)}  {detail}")
    return 0 if all(ok for _, ok, _ in results) else 1


def _tls_line(pas: PasSettings, tls: PasTls) -> str:
    if pas.plain_http:
        return (
            "WARNING plain HTTP, no TLS (PA_PAS__ALLOW_PLAIN_HTTP=true): for a development run"
            " against the sandbox only"
        )
    client = tls.client_certificate
    presented = f"client certificate {client}" if client else "no client certificate"
    return f"TLS 1.2 or later, trusting {tls.trusted}, {presented}"


async def _probe_pas(pas: PasSettings, tls: PasTls) -> tuple[str, bool, str]:
    """A HEAD of the adjustment URL through the service's own client: TLS, DNS, a status."""
    url = pas.base_url + pas.adjustment_path
    shown_url = redact_url(url)
    try:
        async with open_http_client(pas, tls.context) as client:
            response = await client.request("HEAD", url)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        error = redact_in_text(describe(exc), url)
        failure = tls_failure(exc)
        setting = "PA_PAS__BASE_URL" if failure is None else failure.setting
        return ("pas", False, f"{shown_url}: {error} (setting {setting})")
    return ("pas", True, f"{shown_url} answered HTTP {response.status_code}")


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


async def _check_registry(settings: Settings) -> tuple[str, bool, str]:
    """The registry answers (with the credentials given), and what the command subject holds."""
    registry_settings = settings.schema_registry
    subject = subject_name(
        registry_settings.subject_strategy, settings.kafka.command_topic, COMMAND
    )
    try:
        async with SchemaRegistryClient.from_settings(registry_settings) as registry:
            subjects = await registry.probe()
            latest = await registry.latest(subject)
    except PointsAdjusterError as exc:
        return ("schema registry", False, f"{exc} (setting PA_SCHEMA_REGISTRY__URL)")
    held = (
        f"latest version {latest.version} (id {latest.id})"
        if latest is not None
        else "no version registered (commands framed with a shipped schema need none)"
    )
    framing = settings.kafka.outcome_framing
    return (
        "schema registry",
        True,
        f"{registry.where} answered ({subjects} subjects); command subject {subject}: {held};"
        f" outcomes framed {framing}",
    )
