"""The plumbing floor: a bare pipeline of the service's own libraries, with nothing of ours.

For each command record: aiokafka hands it over, fastavro decodes it, one PAS call is made
exactly as the service makes it on the wire (the body JWE-encrypted and the request OAuth1-
signed by the service's own security code, on the ``httpx.AsyncClient`` and transport that
``service.pas.client.open_http_client`` builds from the same settings), the answer is
decrypted, one completed event is Avro-encoded and produced (the service's producer options:
idempotent, acks=all), and the record's offset is committed once that event was acknowledged
(the contiguous done prefix of each partition, once a second, as the service commits).

No validation, no idempotency store, no metrics, no logs, no retries, no classification of
the answer: what the service does per record on top of this is *our overhead*; this minus
the crypto floor is *the plumbing floor* (what the libraries cost to move one adjustment).

Run as its own process by ``bench_throughput.py`` (``measure_plumbing_floor``), with the
service's environment (``PA_*``: the broker, the topics, the sandbox, the keys), so that its
CPU is measured as the service's is. It writes ``OUT.ready`` once the group assigned it the
partitions, its figures to ``OUT`` (JSON: its CPU from then to the last commit), and then
waits to be stopped::

    python benchmarks/plumbing_floor.py --expect 2000 --out floor.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from service.app import load_pas_security
from service.codec.avro import COMPLETED, AvroCodec
from service.eventloop import run
from service.kafka.clients import open_consumer, open_producer
from service.pas.bounded import CORRELATION_HEADER, RESPONSE_CORRELATION_HEADER
from service.pas.client import open_http_client
from service.pas.jwe_codec import JweBodyCodec
from service.security.oauth1 import MastercardOAuth1Auth
from service.settings import Settings, load_settings

COMMIT_INTERVAL_S = 1.0
IDLE_LIMIT_S = 60.0


class Offsets:
    """The contiguous done prefix of each partition (what may be committed)."""

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, deque[int]] = {}
        self._done: dict[TopicPartition, set[int]] = {}
        self._commit: dict[TopicPartition, int] = {}

    def taken(self, tp: TopicPartition, offset: int) -> None:
        self._pending.setdefault(tp, deque()).append(offset)
        self._done.setdefault(tp, set())

    def finished(self, tp: TopicPartition, offset: int) -> None:
        pending, done = self._pending[tp], self._done[tp]
        done.add(offset)
        while pending and pending[0] in done:
            first = pending.popleft()
            done.discard(first)
            self._commit[tp] = first + 1

    def take_commit(self) -> dict[TopicPartition, int]:
        ready, self._commit = self._commit, {}
        return ready


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        http: Any,
        body_codec: JweBodyCodec,
        auth: MastercardOAuth1Auth,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.producer = producer
        self.http = http
        self.body_codec = body_codec
        self.auth = auth
        self.codec = AvroCodec.from_directory()
        self.url = settings.pas.base_url + settings.pas.adjustment_path
        self.slots = asyncio.Semaphore(settings.processing.max_in_flight)
        self.offsets = Offsets()
        self.finished = 0
        self.failed = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def one(self, tp: TopicPartition, offset: int, value: bytes, key: bytes | None) -> None:
        try:
            _, command = self.codec.decode(value)
            body = {
                "bankAccountNumber": command["bank_account_number"],
                "pointsToAdjust": command["points_to_adjust"],
                "adjustmentTypeCode": command["adjustment_type_code"],
                "adjustmentReason": command["adjustment_reason"],
                "adjustedBy": command["adjusted_by"],
            }
            received_ms = int(time.time() * 1000)
            started = time.monotonic()
            response = await self.http.post(
                self.url,
                content=self.body_codec.encode(body),
                headers={
                    "Content-Type": self.body_codec.content_type,
                    "Accept": "application/json",
                    CORRELATION_HEADER: command["correlation_id"],
                },
                auth=self.auth,
            )
            answer = self.body_codec.decode(response.content)
            if response.status_code != 200 or not isinstance(answer, dict):
                self.failed += 1
                points = 0
            else:
                points = int(answer.get("pointsAdjusted", 0))
            now_ms = int(time.time() * 1000)
            event = {
                "event_id": command["idempotency_key"],
                "idempotency_key": command["idempotency_key"],
                "correlation_id": command["correlation_id"],
                "requested_by": command["requested_by"],
                "account_ref": "acct-" + command["idempotency_key"][:32],
                "account_masked": "*" * 12 + command["bank_account_number"][-4:],
                "adjustment_type_code": command["adjustment_type_code"],
                "points_requested": command["points_to_adjust"],
                "points_adjusted": points,
                "attempts": 1,
                "command_occurred_at": command["occurred_at"],
                "received_at": received_ms,
                "completed_at": now_ms,
                "pas_duration_ms": int((time.monotonic() - started) * 1000),
                "pas_correlation_id": response.headers.get(RESPONSE_CORRELATION_HEADER),
                "source": {"topic": tp.topic, "partition": tp.partition, "offset": offset},
                "duplicate": False,
                "metadata": command["metadata"],
                "service_version": "plumbing-floor",
            }
            sent = await self.producer.send(
                self.settings.kafka.completed_topic, self.codec.encode(COMPLETED, event), key=key
            )
            await sent
        finally:
            self.offsets.finished(tp, offset)
            self.finished += 1
            self.slots.release()

    async def consume(self, expect: int) -> None:
        last_progress = time.monotonic()
        taken = 0
        while self.finished < expect:
            batches = await self.consumer.getmany(
                timeout_ms=100, max_records=self.settings.kafka.max_poll_records
            )
            for tp, messages in batches.items():
                for message in messages:
                    await self.slots.acquire()
                    self.offsets.taken(tp, message.offset)
                    task = asyncio.create_task(
                        self.one(tp, message.offset, message.value, message.key)
                    )
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                    taken += 1
                    last_progress = time.monotonic()
            if taken >= expect and self.tasks:
                await asyncio.wait(set(self.tasks))
            if time.monotonic() - last_progress > IDLE_LIMIT_S:
                raise SystemExit(f"plumbing floor: no record for {IDLE_LIMIT_S:.0f} s")

    async def commit_forever(self) -> None:
        while True:
            await asyncio.sleep(COMMIT_INTERVAL_S)
            await self.commit()

    async def commit(self) -> None:
        offsets = self.offsets.take_commit()
        if offsets:
            await self.consumer.commit(offsets)


class Assigned(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def on_partitions_revoked(self, revoked: object) -> None:
        return None

    async def on_partitions_assigned(self, assigned: object) -> None:
        self.event.set()


async def main_async(expect: int, ready: Path) -> dict[str, float]:
    settings = load_settings()
    credentials, tls = load_pas_security(settings.pas)
    body_codec = JweBodyCodec(
        credentials.encrypter, credentials.decrypter, settings.pas.encrypted_field
    )
    auth = MastercardOAuth1Auth(credentials.signer)
    async with (
        open_http_client(settings.pas, tls.context) as http,
        open_producer(settings.kafka) as producer,
        open_consumer(settings.kafka) as consumer,
    ):
        assigned = Assigned()
        consumer.subscribe([settings.kafka.command_topic], listener=assigned)
        pipeline = Pipeline(settings, consumer, producer, http, body_codec, auth)
        # Ready once the group has assigned the partitions (aiokafka joins in the background).
        await assigned.event.wait()
        await asyncio.to_thread(ready.write_text, "ready\n")
        cpu0, wall0 = time.process_time(), time.monotonic()
        committer = asyncio.create_task(pipeline.commit_forever())
        try:
            await pipeline.consume(expect)
        finally:
            committer.cancel()
        await pipeline.commit()
        cpu1, wall1 = time.process_time(), time.monotonic()
    return {
        "records": pipeline.finished,
        "failed": pipeline.failed,
        "cpu_s": cpu1 - cpu0,
        "wall_s": wall1 - wall0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect", type=int, required=True, help="records to process")
    parser.add_argument("--out", type=Path, required=True, help="write the figures here (JSON)")
    args = parser.parse_args(argv)
    settings = load_settings()
    figures = run(main_async(args.expect, args.out.with_suffix(".ready")), settings.event_loop)
    args.out.write_text(json.dumps(figures))
    while True:  # until the benchmark stops us (SIGTERM), so that it can read our CPU
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
