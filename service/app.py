"""The composition root: opens every resource in one AsyncExitStack and runs the service."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import uuid
from collections.abc import Mapping
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import structlog

from service import __version__
from service.codec.avro import COMMAND, AvroCodec
from service.domain.command import CommandRules
from service.domain.processor import Processor, ProcessorConfig
from service.endpoints import serve_endpoints
from service.errors import UndecodableRecordError
from service.idempotency.base import IdempotencyStore
from service.idempotency.memory import MemoryStore
from service.idempotency.sqlite import SqliteStore
from service.kafka.clients import open_consumer, open_producer
from service.kafka.publisher import OutcomePublisher
from service.kafka.runner import CommandRunner
from service.metrics import Metrics
from service.pas.client import PasClient, open_http_client
from service.pas.credentials import load_credentials
from service.pas.metered import MeteredPas
from service.settings import IdempotencySettings, Settings

log = structlog.get_logger("service.app")


async def open_store(settings: IdempotencySettings) -> IdempotencyStore:
    if settings.backend == "memory":
        return MemoryStore()
    return await SqliteStore.open(settings.sqlite_path)


def command_decoder(codec: AvroCodec) -> Any:
    def decode(value: bytes | None) -> Mapping[str, Any]:
        name, record = codec.decode(value)
        if name != COMMAND:
            raise UndecodableRecordError("UNEXPECTED_SCHEMA", f"a {name} is not a command")
        return record

    return decode


def worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def request_stop(signame: str) -> None:
        if not stop.is_set():
            log.info("shutdown.requested", signal=signame)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, sig.name)


async def run_service(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``), then drain, commit and close everything."""
    stop = stop or asyncio.Event()
    credentials = load_credentials(settings.pas, now=datetime.now(UTC))
    for warning in credentials.warnings:
        log.warning("credentials.expiring", detail=warning)
    install_signal_handlers(stop)
    metrics = Metrics()
    codec = AvroCodec.from_directory()
    owner = worker_id()
    log.info(
        "service.starting",
        version=__version__,
        worker=owner,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        command_topic=settings.kafka.command_topic,
        pas=settings.pas.base_url,
        store=settings.idempotency.backend,
    )
    async with AsyncExitStack() as stack:
        store = await open_store(settings.idempotency)
        stack.push_async_callback(store.close)
        http = await stack.enter_async_context(open_http_client(settings.pas))
        pas = MeteredPas(PasClient(http, settings.pas, credentials), metrics)
        if settings.metrics.enabled:
            url = await stack.enter_async_context(
                serve_endpoints(metrics, settings.metrics.host, settings.metrics.port)
            )
            log.info("endpoints.listening", url=url)
        producer = await stack.enter_async_context(open_producer(settings.kafka))
        consumer = await stack.enter_async_context(open_consumer(settings.kafka))
        processor = Processor(
            decode=command_decoder(codec),
            store=store,
            pas=pas,
            config=ProcessorConfig(
                rules=CommandRules(settings.pas.max_points, settings.pas.allowed_type_codes),
                owner=owner,
                lease_s=settings.idempotency.lease_s,
                version=__version__,
                unavailable_attempts=settings.pas.unavailable_attempts,
                unavailable_backoff_s=settings.pas.unavailable_backoff_s,
            ),
        )
        runner = CommandRunner(
            consumer=consumer,
            topic=settings.kafka.command_topic,
            processor=processor,
            publisher=OutcomePublisher(producer, codec, settings.kafka),
            metrics=metrics,
            stop=stop,
            drain_timeout_s=settings.shutdown_timeout_s,
        )
        await runner.run()
    log.info("service.stopped")
