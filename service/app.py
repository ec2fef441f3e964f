"""The composition root: opens every resource in one AsyncExitStack and runs the service."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from service import __version__
from service.codec.avro import COMMAND, AvroCodec
from service.codec.command import CommandDecoder
from service.codec.writers import RegistryWriters
from service.domain.adaptive import AdaptiveLimit, RatePacer
from service.domain.backoff import BackoffPolicy
from service.domain.circuit import CircuitBreaker, CircuitState
from service.domain.command import CommandRules
from service.domain.ports import PasPort
from service.domain.processor import Processor, ProcessorConfig
from service.domain.store import IdempotencyStore
from service.endpoints import serve_endpoints
from service.errors import StartupError
from service.health import Health
from service.idempotency.continuity import verify_continuity
from service.idempotency.factory import open_store
from service.idempotency.metered import MeteredStore
from service.kafka.clients import (
    open_consumer,
    open_producer,
    open_transactions,
    topic_message_limits,
)
from service.kafka.deadletter import DeadLetterPublisher
from service.kafka.publisher import OutcomePublisher
from service.kafka.runner import CommandRunner
from service.kafka.sizing import RecordSender
from service.kafka.transactions import KafkaTransactions
from service.metrics import Metrics
from service.pas.client import PasClient, open_http_client
from service.pas.credentials import Credentials, load_credentials
from service.pas.expiry import certificate_expiry, report_certificate_expiry
from service.pas.guarded import GuardedHistory, GuardedPas
from service.pas.history import PasHistoryClient, TimedHistoryPort
from service.pas.limited import LimitedHistory, LimitedPas
from service.pas.metered import MeteredHistory, MeteredPas
from service.pas.rotation import CredentialStore, watch_credentials
from service.pas.tls import PasTls, load_pas_tls
from service.redact import redact_url
from service.registry.client import SchemaRegistryClient
from service.registry.outcomes import outcome_schema_ids, outcome_topics
from service.registry.subjects import subject_name
from service.settings import (
    LEASE_MARGIN_S,
    IdempotencySettings,
    KafkaSettings,
    PasSettings,
    Settings,
)
from service.tools.topics import service_topics
from service.tracing import open_span_sink
from service.watchdog import Check, kafka_check, watch

log = structlog.get_logger("service.app")


def command_decoder(codec: AvroCodec, writers: RegistryWriters | None = None) -> CommandDecoder:
    """What reads each command record's value into a typed value for the processor (its
    ``prepare`` fetches the writer schemas the registry holds, when there is one)."""
    return CommandDecoder(codec, writers)


async def open_codecs(
    stack: AsyncExitStack, settings: Settings, codec: AvroCodec
) -> tuple[CommandDecoder, AvroCodec]:
    """The command decoder (with the registry's writer schemas when there is a registry), and
    the codec outcomes are written with: with ``PA_KAFKA__OUTCOME_FRAMING=confluent``, one
    writing the registry ids of the outcome schemas, found or registered now."""
    registry_settings = settings.schema_registry
    if registry_settings.url is None:
        return command_decoder(codec), codec
    registry = await stack.enter_async_context(
        SchemaRegistryClient.from_settings(registry_settings)
    )
    strategy = registry_settings.subject_strategy
    writers = RegistryWriters(
        codec,
        registry,
        subject_name(strategy, settings.kafka.command_topic, COMMAND),
        rescan_interval_s=registry_settings.rescan_interval_s,
    )
    log.info("registry.configured", url=registry.where, command_subject=writers.subject)
    if settings.kafka.outcome_framing != "confluent":
        return command_decoder(codec, writers), codec
    ids = await outcome_schema_ids(
        registry,
        codec,
        outcome_topics(settings.kafka.completed_topic, settings.kafka.failed_topic),
        strategy,
        wait_s=registry_settings.startup_wait_s,
    )
    return command_decoder(codec, writers), codec.with_schema_ids(ids)


def concurrency_observer(metrics: Metrics) -> Callable[[int], None]:
    def changed(limit: int) -> None:
        metrics.pas_concurrency_limit.set(limit)
        log.debug("pas.concurrency_limit", limit=limit)

    return changed


def circuit_observer(metrics: Metrics) -> Callable[[CircuitState, CircuitState], None]:
    def changed(old: CircuitState, new: CircuitState) -> None:
        metrics.circuit_open.set(0 if new is CircuitState.CLOSED else 1)
        log.warning("circuit.changed", previous=old.name.lower(), state=new.name.lower())

    return changed


async def prune_forever(
    store: IdempotencyStore, settings: IdempotencySettings, metrics: Metrics, stop: asyncio.Event
) -> None:
    """Delete terminal idempotency records older than the retention window, periodically."""
    while not stop.is_set():
        cutoff = datetime.now(UTC) - timedelta(seconds=settings.retention_s)
        try:
            pruned = await store.prune(older_than=cutoff)
        except Exception as exc:  # the store is failing: the next round tries again
            log.warning("idempotency.prune_failed", error=f"{type(exc).__name__}: {exc}")
            pruned = 0
        if pruned:
            metrics.pruned.inc(pruned)
            log.info("idempotency.pruned", records=pruned)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.prune_interval_s)


async def require_topics(producer: AIOKafkaProducer, settings: KafkaSettings) -> None:
    """Refuse to start, with one clear line, when a topic the service uses is missing."""
    present = await broker_topics(producer, settings)
    missing = [name for name in service_topics(settings) if name not in present]
    if missing:
        raise StartupError(
            "Kafka topics",
            "missing: " + ", ".join(missing) + " (create them: points-adjuster topics)",
        )


async def broker_topics(producer: AIOKafkaProducer, settings: KafkaSettings) -> set[str]:
    """The topics the broker knows now (a metadata request of its own, not the cache)."""
    try:
        cluster = await producer.client.fetch_all_metadata()
    except KafkaError as exc:
        raise ConnectionError(f"broker unreachable at {settings.bootstrap_servers}: {exc}") from exc
    return set(cluster.topics())


def worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def install_signal_handlers(stop: asyncio.Event, reload: asyncio.Event | None = None) -> None:
    """SIGTERM and SIGINT set ``stop``; SIGHUP sets ``reload`` (the credentials are read
    again, ``service.pas.rotation``), when given."""
    loop = asyncio.get_running_loop()

    def request_stop(signame: str) -> None:
        if not stop.is_set():
            log.info("shutdown.requested", signal=signame)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, sig.name)
    if reload is not None:

        def request_reload() -> None:
            log.info("credentials.reload_requested", signal="SIGHUP")
            reload.set()

        loop.add_signal_handler(signal.SIGHUP, request_reload)


def load_pas_security(pas: PasSettings) -> tuple[Credentials, PasTls]:
    """The PAS credentials and TLS context, checked before anything is opened; their
    expiry warnings logged, and a loud warning when PAS is called over plain HTTP."""
    credentials = load_credentials(pas, now=datetime.now(UTC))
    tls = load_pas_tls(pas, now=datetime.now(UTC))
    for warning in [*credentials.warnings, *tls.warnings]:
        log.warning("credentials.expiring", detail=warning)
    if pas.plain_http:
        log.warning(
            "pas.plain_http",
            pas=redact_url(pas.base_url),
            detail="PAS is called without TLS (PA_PAS__ALLOW_PLAIN_HTTP=true): for a"
            " development run against the sandbox only",
        )
    return credentials, tls


def rotating_credentials(
    pas: PasSettings, credentials: Credentials, tls: PasTls, metrics: Metrics
) -> tuple[CredentialStore, dict[str, datetime]]:
    """The credential store the PAS clients read, and the certificate expiry mapping the
    expiry loop reports; the gauge is set now (from the first scrape on) and again after
    each reload, from that mapping, updated in place."""
    expiry = certificate_expiry(credentials, tls)
    metrics.set_certificate_expiry(expiry, datetime.now(UTC))

    def reloaded(fresh: Credentials) -> None:
        expiry.clear()
        expiry.update(certificate_expiry(fresh, tls))
        metrics.set_certificate_expiry(expiry, datetime.now(UTC))

    return CredentialStore(pas, credentials, on_reload=reloaded), expiry


def listening(url: str, also: Callable[[str], None] | None) -> None:
    log.info("endpoints.listening", url=url)
    if also is not None:
        also(url)


async def run_service(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    inherited_lock: int | None = None,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``), then drain, commit and close everything.

    A worker of ``run --workers N`` (``service.workers``) passes the SQLite owner's lock it
    inherited (``inherited_lock``) and hears the URL its endpoints listen on (``on_listening``).
    """
    stop = stop or asyncio.Event()
    credentials, tls = load_pas_security(settings.pas)
    reload_requested = asyncio.Event()
    install_signal_handlers(stop, reload_requested)
    metrics = Metrics()
    credential_store, expiry = rotating_credentials(settings.pas, credentials, tls, metrics)
    health = Health(on_change=metrics.set_ready)
    codec = AvroCodec.from_directory()
    owner = worker_id()
    log.info(
        "service.starting",
        version=__version__,
        worker=owner,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        command_topic=settings.kafka.command_topic,
        pas=redact_url(settings.pas.base_url),
        store=settings.idempotency.where,
    )
    async with AsyncExitStack() as stack:
        # First in, so last out: the spans of the drain are exported too.
        spans = stack.enter_context(open_span_sink(settings.tracing.otlp_endpoint))
        store: IdempotencyStore = MeteredStore(
            await open_store(settings.idempotency, exclusive=True, inherited_lock=inherited_lock),
            metrics,
        )
        stack.push_async_callback(store.close)
        override = await verify_continuity(store, settings.idempotency, settings.kafka)
        if override is not None:
            log.warning("idempotency.empty_store_allowed", store_id=store.identity, detail=override)
        log.info("idempotency.store_opened", store_id=store.identity, created=store.created)
        http = await stack.enter_async_context(open_http_client(settings.pas, tls.context))
        breaker = CircuitBreaker.from_settings(
            settings.circuit, time.monotonic, on_change=circuit_observer(metrics)
        )
        pas: PasPort = GuardedPas(
            MeteredPas(PasClient(http, settings.pas, credential_store, spans=spans), metrics),
            breaker,
        )
        processing = settings.processing
        metrics.pas_concurrency_limit.set(processing.max_in_flight)
        if processing.adaptive_concurrency:
            limit = AdaptiveLimit(
                processing.max_in_flight,
                time.monotonic,
                on_change=concurrency_observer(metrics),
            )
            metrics.pas_concurrency_limit.set(limit.limit)  # it starts low (slow start)
            pas = LimitedPas(pas, limit, RatePacer(time.monotonic))
        history: TimedHistoryPort = GuardedHistory(
            MeteredHistory(PasHistoryClient(http, settings.pas, credential_store), metrics), breaker
        )
        if isinstance(pas, LimitedPas):  # a lookup takes its slot from the calls' pool
            history = LimitedHistory(history, pas.slots, settings.pas.call_timeout_s)
        if settings.metrics.enabled:
            url = await stack.enter_async_context(
                serve_endpoints(metrics, health, settings.metrics.host, settings.metrics.port)
            )
            listening(url, on_listening)
        producer = await stack.enter_async_context(open_producer(settings.kafka))
        await require_topics(producer, settings.kafka)
        limits = await topic_message_limits(settings.kafka, service_topics(settings.kafka))
        log.info("kafka.topic_limits", max_message_bytes=limits)
        decoder, outcome_codec = await open_codecs(stack, settings, codec)
        # With transactions, every record the service publishes goes through the
        # transactional producer; the idempotent one above only answers metadata questions.
        transactions: KafkaTransactions | None = None
        sender: RecordSender = producer
        if settings.kafka.transactions:  # started before the consumer reads any offset
            transactions = await stack.enter_async_context(open_transactions(settings.kafka))
            sender = transactions
        consumer = await stack.enter_async_context(open_consumer(settings.kafka))
        processor = Processor(
            decode=decoder,
            prepare=decoder.prepare,
            store=store,
            pas=pas,
            history=history,
            spans=spans,
            config=ProcessorConfig(
                rules=CommandRules(
                    settings.pas.max_points,
                    settings.pas.allowed_type_codes,
                    settings.processing.max_record_bytes,
                ),
                owner=owner,
                lease_s=settings.idempotency.lease_s,
                version=__version__,
                backoff=BackoffPolicy.from_settings(settings.retry),
                max_attempts=settings.retry.max_attempts,
                command_ttl_s=settings.processing.command_ttl_s,
                reconcile=settings.reconciliation.enabled,
                reference_in_reason=settings.reconciliation.reference_in_reason,
                settle_s=settings.reconciliation.settle_s,
                max_lookups=settings.reconciliation.max_lookups,
                call_timeout_s=settings.pas.call_timeout_s,
                lease_margin_s=LEASE_MARGIN_S,
                transactional=settings.kafka.transactions,
            ),
        )
        runner = CommandRunner(
            consumer=consumer,
            topic=settings.kafka.command_topic,
            processor=processor,
            publisher=OutcomePublisher(sender, outcome_codec, settings.kafka, topic_limits=limits),
            dead_letters=DeadLetterPublisher(
                sender,
                settings.kafka,
                settings.kafka.group_id,
                __version__,
                topic_limits=limits,
            ),
            metrics=metrics,
            stop=stop,
            drain_timeout_s=settings.shutdown_timeout_s,
            ordering=settings.processing.ordering,
            max_in_flight=settings.processing.max_in_flight,
            max_buffered=settings.processing.max_buffered,
            max_poll_records=settings.kafka.max_poll_records,
            max_buffered_bytes=settings.processing.max_buffered_bytes,
            fault_backoff_max_s=settings.processing.fault_backoff_max_s,
            health=health,
            transactions=transactions,
        )
        checks = [
            kafka_check(
                lambda: broker_topics(producer, settings.kafka),
                service_topics(settings.kafka),
                timeout_s=min(settings.kafka.request_timeout_ms / 1000, 10.0),
            ),
            Check("store", store.probe, timeout_s=10.0),
        ]
        await run_tasks(
            runner,
            {
                "pruner": prune_forever(store, settings.idempotency, metrics, stop),
                "certificate_expiry": report_certificate_expiry(
                    expiry,
                    metrics.set_certificate_expiry,
                    stop,
                    clock=lambda: datetime.now(UTC),
                ),
                "watchdog": watch(checks, health, stop),
                "credentials": watch_credentials(
                    credential_store,
                    settings.pas,
                    reload_requested,
                    stop,
                    poll_s=settings.pas.credentials_poll_s,
                ),
            },
        )
    log.info("service.stopped")


async def run_tasks(
    runner: CommandRunner, background: Mapping[str, Coroutine[Any, Any, None]]
) -> None:
    """Run the runner, its dispatcher and the ``background`` loops in one task group.

    The runner runs in the group's own body; when it returns (stopped, drained, committed)
    the dispatcher and the loops are cancelled, so none outlives it. When any of them fails,
    the others are cancelled (the runner still drains within its budget and commits) and the
    error is raised here: the one error itself, or the group of them when several failed.
    A ``SystemExit`` or ``KeyboardInterrupt`` goes through as itself.
    """
    try:
        async with asyncio.TaskGroup() as tasks:
            siblings = [tasks.create_task(runner.dispatch(), name="dispatcher")]
            siblings += [tasks.create_task(loop, name=name) for name, loop in background.items()]
            try:
                await runner.run()
            finally:
                for task in siblings:
                    task.cancel()
    except ExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
