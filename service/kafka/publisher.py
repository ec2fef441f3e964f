"""Publishing outcome events: Avro single-object encoded, keyed by account reference."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer

from service.codec.avro import COMPLETED, FAILED, AvroCodec
from service.domain.decisions import Publish
from service.settings import KafkaSettings


class OutcomePublisher:
    """Sends decisions to the completed or failed topic."""

    def __init__(self, producer: AIOKafkaProducer, codec: AvroCodec, settings: KafkaSettings):
        self._producer = producer
        self._codec = codec
        self._topics = {"completed": settings.completed_topic, "failed": settings.failed_topic}
        self._schemas = {"completed": COMPLETED, "failed": FAILED}

    async def send(self, decision: Publish) -> asyncio.Future[Any]:
        """Queue the event; the returned future resolves when the broker acknowledged it."""
        value = self._codec.encode(self._schemas[decision.kind], decision.payload)
        key = decision.record_key.encode("utf-8") if decision.record_key else None
        headers = [
            ("event_type", decision.kind.encode()),
            ("correlation_id", str(decision.payload.get("correlation_id", "")).encode()),
        ]
        future: asyncio.Future[Any] = await self._producer.send(
            self._topics[decision.kind], value=value, key=key, headers=headers
        )
        return future
