"""What moving one record costs in Kafka clients alone: aiokafka (the service's client) against
librdkafka through confluent-kafka, on the same broker, records and pattern, in one run.

Issue 16 asks for the service's CPU per adjustment at most 2.0x the crypto floor; the bare
pipeline of the service's own libraries (``plumbing_floor.py``) already costs 1.8-1.9x, and
aiokafka with its asyncio streams is about 100-120 us of it in the profile. This measures how
much of that a C client would take off, before anyone rewrites the Kafka adapter for it.

The pattern is the service's, without anything else: records fetched from a 12-partition
topic, one event produced per record (idempotent, acks=all, linger 5 ms, the service's
producer options), the record counted done when its event is acknowledged, at most
``--in-flight`` (200, as ``PA_PROCESSING__MAX_IN_FLIGHT``) records between fetch and
acknowledgement, and the contiguous done prefix of each partition committed once a second and
at the end. The two clients alternate ``--rounds`` times (A, B, A, B, ...), each round a new
consumer group over the same records, so that a neighbour's load hits both. Measured: this
process's CPU (every thread: librdkafka's own threads are the process's too) and its event
loop thread's, from the first record fetched to the last commit, per record.

confluent-kafka has no asyncio interface of its own worth measuring (its ``aio`` wrappers run
each call in a thread pool), so the bridge here is the cheapest one we could write: a thread
blocks in ``Consumer.consume`` and hands each batch to the loop, another in
``Producer.poll`` hands each batch of delivery reports to the loop; the loop produces and
commits. That is also how a service on librdkafka would have to be built.

    .venv/bin/python benchmarks/bench_kafka_clients.py            # 20,000 records, 3 rounds
    .venv/bin/python benchmarks/bench_kafka_clients.py --records 5000 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "devkit"))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

PARTITIONS = 12
COMMIT_INTERVAL_S = 1.0
RECORD_BYTES = 420  # a single-object-encoded command is 380-460 bytes
EVENT_BYTES = 560  # a completed event
LINGER_MS = 5  # the service's (service.kafka.clients)


@dataclass(frozen=True)
class Run:
    """One client's run: where, how many records, how many in flight, how fast, what linger."""

    bootstrap: str
    commands: str
    events: str
    records: int
    in_flight: int
    rate: float  # records/s; 0: as fast as they go
    linger_ms: int


@dataclass
class Figures:
    client: str
    records: int
    seconds: float
    cpu_s: float
    loop_cpu_s: float
    others_pct: float
    rate: float

    @classmethod
    def of(cls, client: str, run: Run, meter: Meter) -> Figures:
        return cls(
            client,
            run.records,
            meter.seconds,
            meter.cpu_s,
            meter.loop_cpu_s,
            meter.others_pct,
            run.rate,
        )

    @property
    def us_per_record(self) -> float:
        return self.cpu_s / self.records * 1e6

    @property
    def loop_us_per_record(self) -> float:
        return self.loop_cpu_s / self.records * 1e6


@dataclass
class Done:
    """The contiguous done prefix of each partition, as the service commits it."""

    pending: dict[int, deque[int]] = field(default_factory=dict)
    finished: dict[int, set[int]] = field(default_factory=dict)
    commit_at: dict[int, int] = field(default_factory=dict)
    count: int = 0

    def taken(self, partition: int, offset: int) -> None:
        self.pending.setdefault(partition, deque()).append(offset)

    def finish(self, partition: int, offset: int) -> None:
        self.count += 1
        queue = self.pending[partition]
        done = self.finished.setdefault(partition, set())
        done.add(offset)
        while queue and queue[0] in done:
            done.discard(queue[0])
            self.commit_at[partition] = queue.popleft() + 1

    def take_commits(self) -> dict[int, int]:
        commits, self.commit_at = self.commit_at, {}
        return commits


class Pacer:
    """At most ``rate`` records a second (0: no limit), as a service bound by its CPU at that
    rate takes them: records then leave one by one, and each produce request carries only
    the few that the producer's linger gathers, as in the service, not a backlog's hundreds."""

    def __init__(self, rate: float) -> None:
        self._step = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self._step:
            return
        now = time.perf_counter()
        self._next = max(self._next + self._step, now - 0.05)
        if self._next > now:
            await asyncio.sleep(self._next - now)


def others_cpu_ticks() -> int:
    """Busy ticks of the whole machine (user + nice + system), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:]
    return sum(int(v) for v in fields[:3])


class Meter:
    """This process's and its main thread's CPU, and the machine's busy share beside it."""

    def __enter__(self) -> Meter:
        self._cpu = time.process_time()
        self._loop = time.thread_time()
        self._wall = time.perf_counter()
        self._busy = others_cpu_ticks()
        return self

    def __exit__(self, *_: object) -> None:
        self.cpu_s = time.process_time() - self._cpu
        self.loop_cpu_s = time.thread_time() - self._loop
        self.seconds = time.perf_counter() - self._wall
        ticks = os.sysconf("SC_CLK_TCK")
        busy_s = (others_cpu_ticks() - self._busy) / ticks
        cores = os.cpu_count() or 1
        self.others_pct = max(0.0, busy_s - self.cpu_s) / (self.seconds * cores) * 100


async def prepare(bootstrap: str, records: int) -> tuple[str, str]:
    """A command topic holding ``records`` records over 12 partitions, and an event topic."""
    suffix = uuid.uuid4().hex[:8]
    commands, events = f"bench-commands-{suffix}", f"bench-events-{suffix}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1) for name in (commands, events)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        value = os.urandom(RECORD_BYTES)
        sent = [
            await producer.send(commands, value=value, key=f"acct-{n % 10_000}".encode())
            for n in range(records)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return commands, events


async def run_aiokafka(run: Run) -> Figures:
    """The service's client: the consumer and producer options of ``service.kafka.clients``."""
    bootstrap, commands, events, records = run.bootstrap, run.commands, run.events, run.records
    consumer = AIOKafkaConsumer(
        commands,
        bootstrap_servers=bootstrap,
        group_id=f"aiokafka-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=200,
        isolation_level="read_committed",
        max_partition_fetch_bytes=256 * 1024,
        fetch_max_bytes=4 * 1024 * 1024,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=run.linger_ms
    )
    await producer.start()
    await consumer.start()
    done = Done()
    room = asyncio.Semaphore(run.in_flight)
    pacer = Pacer(run.rate)
    event = os.urandom(EVENT_BYTES)
    finished = asyncio.Event()
    partitions = {p: TopicPartition(commands, p) for p in range(PARTITIONS)}

    def acknowledged(partition: int, offset: int, future: asyncio.Future[Any]) -> None:
        future.result()
        done.finish(partition, offset)
        room.release()
        if done.count == records:
            finished.set()

    async def commit_now() -> None:
        commits = done.take_commits()
        if commits:
            await consumer.commit({partitions[p]: o for p, o in commits.items()})

    async def committer() -> None:
        while not finished.is_set():
            await asyncio.sleep(COMMIT_INTERVAL_S)
            await commit_now()

    try:
        # Wait for the assignment before measuring: both clients measure from the first record.
        batch = await consumer.getmany(timeout_ms=30_000, max_records=1)
        with Meter() as meter:
            commit_task = asyncio.create_task(committer())
            taken = 0
            while taken < records:
                for tp, messages in batch.items():
                    for message in messages[: records - taken]:
                        await room.acquire()
                        await pacer.wait()
                        done.taken(tp.partition, message.offset)
                        taken += 1
                        future = await producer.send(events, value=event, key=message.key)
                        future.add_done_callback(
                            lambda f, p=tp.partition, o=message.offset: acknowledged(p, o, f)
                        )
                if taken < records:
                    batch = await consumer.getmany(timeout_ms=1_000)
            await finished.wait()
            commit_task.cancel()
            await commit_now()
    finally:
        await consumer.stop()
        await producer.stop()
    return Figures.of("aiokafka", run, meter)


async def run_librdkafka(run: Run) -> Figures:
    """confluent-kafka with the same options, bridged to the loop by two threads."""
    bootstrap, commands, events, records = run.bootstrap, run.commands, run.events, run.records
    from confluent_kafka import Consumer, Producer
    from confluent_kafka import TopicPartition as RdPartition

    loop = asyncio.get_running_loop()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"librdkafka-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "max.partition.fetch.bytes": 256 * 1024,
            "fetch.max.bytes": 4 * 1024 * 1024,
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": run.linger_ms,
        }
    )
    consumer.subscribe([commands])
    done = Done()
    room = threading.Semaphore(run.in_flight)
    event = os.urandom(EVENT_BYTES)
    finished = asyncio.Event()
    stopping = threading.Event()
    first = asyncio.Event()
    reports: list[tuple[int, int]] = []  # appended by the poll thread, taken by it too

    def delivered(partition: int, offset: int, error: Any, message: Any) -> None:
        if error is not None:
            raise RuntimeError(f"delivery failed: {error}")
        reports.append((partition, offset))

    def acknowledged(batch: list[tuple[int, int]]) -> None:
        for partition, offset in batch:
            done.finish(partition, offset)
            room.release()
        if done.count == records:
            finished.set()

    arrived: asyncio.Queue[list[Any]] = asyncio.Queue()
    pacer = Pacer(run.rate)

    def handle(messages: list[Any]) -> None:
        first.set()
        arrived.put_nowait(messages)

    async def produce_forever() -> None:
        taken = 0
        while True:
            for message in await arrived.get():
                if message.error() is not None or taken == records:
                    room.release()
                    continue
                taken += 1
                await pacer.wait()
                partition, offset = message.partition(), message.offset()
                done.taken(partition, offset)
                producer.produce(
                    events,
                    value=event,
                    key=message.key(),
                    on_delivery=functools.partial(delivered, partition, offset),
                )

    def consume_forever() -> None:
        while not stopping.is_set():
            room.acquire()
            wanted = 1
            while wanted < 200 and room.acquire(blocking=False):
                wanted += 1
            messages = consumer.consume(num_messages=wanted, timeout=0.1)
            for _ in range(wanted - len(messages)):
                room.release()
            if messages:
                loop.call_soon_threadsafe(handle, messages)

    def poll_forever() -> None:
        while not stopping.is_set():
            producer.poll(0.1)
            if reports:
                batch = reports[:]
                del reports[: len(batch)]
                loop.call_soon_threadsafe(acknowledged, batch)

    def commit_now(*, wait: bool) -> None:
        commits = done.take_commits()
        if commits:
            offsets = [RdPartition(commands, p, o) for p, o in commits.items()]
            if wait:
                consumer.commit(offsets=offsets, asynchronous=False)
            else:
                consumer.commit(offsets=offsets, asynchronous=True)

    threads = [
        threading.Thread(target=consume_forever, name="consume", daemon=True),
        threading.Thread(target=poll_forever, name="poll", daemon=True),
    ]

    def stop_threads() -> None:
        stopping.set()
        room.release()  # the consuming thread may wait for room
        for thread in threads:
            thread.join(5)

    for thread in threads:
        thread.start()
    try:
        await asyncio.wait_for(first.wait(), 30)
        with Meter() as meter:
            producing = asyncio.create_task(produce_forever())
            while not finished.is_set():
                try:
                    await asyncio.wait_for(finished.wait(), COMMIT_INTERVAL_S)
                except TimeoutError:
                    commit_now(wait=False)
            # A synchronous commit waits while another thread is in consume(): stop that first.
            producing.cancel()
            await asyncio.to_thread(stop_threads)
            await asyncio.to_thread(commit_now, wait=True)
    finally:
        await asyncio.to_thread(stop_threads)
        producer.flush(5)
        consumer.close()
    return Figures.of("librdkafka", run, meter)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="CPU per record of aiokafka against librdkafka (confluent-kafka), moving"
        " records as the service does: fetch, produce one event (acks=all), commit.",
    )
    parser.add_argument("--records", type=int, default=20_000, help="records per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating pairs (default 3)")
    parser.add_argument("--in-flight", type=int, default=200, help="records between fetch and ack")
    parser.add_argument(
        "--rates",
        default="0,800",
        help="comma-separated records/s to run each pair at; 0 = as fast as they go (a backlog)"
        " (default 0,800: a backlog, and about the service's rate on a 2-core machine)",
    )
    parser.add_argument(
        "--paced-seconds",
        type=float,
        default=10.0,
        help="a paced run's length: rate x this many records (at most --records; default 10)",
    )
    parser.add_argument(
        "--linger-ms", type=int, default=LINGER_MS, help="the producers' linger (default 5)"
    )
    parser.add_argument(
        "--clients",
        default="aiokafka,librdkafka",
        help="which clients, comma-separated (default aiokafka,librdkafka)",
    )
    parser.add_argument(
        "--bootstrap", default="", help="a running broker (default: start a local one)"
    )
    args = parser.parse_args(argv)
    args.rates = [float(rate) for rate in args.rates.split(",")]
    args.clients = args.clients.split(",")
    unknown = set(args.clients) - {"aiokafka", "librdkafka"}
    if unknown:
        parser.error(f"--clients: unknown {', '.join(sorted(unknown))}")
    return args


async def measure(bootstrap: str, args: argparse.Namespace) -> list[Figures]:
    commands, events = await prepare(bootstrap, args.records)
    print(
        f"{args.records:,} records of {RECORD_BYTES} bytes in {commands} ({PARTITIONS} partitions)"
    )
    figures: list[Figures] = []
    known = {"aiokafka": run_aiokafka, "librdkafka": run_librdkafka}
    clients = [known[name] for name in args.clients]
    print(f"producers' linger {args.linger_ms} ms", flush=True)
    for rate in args.rates:
        records = args.records if rate == 0 else min(args.records, int(rate * args.paced_seconds))
        what = "as fast as they go" if rate == 0 else f"paced at {rate:,.0f}/s"
        print(f"{records:,} records per run, {what}:", flush=True)
        for round_ in range(1, args.rounds + 1):
            for client in clients:
                got = await client(
                    Run(bootstrap, commands, events, records, args.in_flight, rate, args.linger_ms)
                )
                figures.append(got)
                print(
                    f"  round {round_} {got.client:<11} {got.us_per_record:7.1f} us/record"
                    f" (event loop thread {got.loop_us_per_record:6.1f}),"
                    f" {got.records / got.seconds:8,.0f} records/s; the rest of the box"
                    f" (the broker too) {got.others_pct:3.0f} % busy",
                    flush=True,
                )
    return figures


def summary(figures: list[Figures]) -> None:
    print("\nCPU per record (all threads of the process), median of the rounds:")
    for rate in dict.fromkeys(f.rate for f in figures):
        print("  as fast as they go" if rate == 0 else f"  paced at {rate:,.0f}/s")
        by_client: dict[str, list[Figures]] = {}
        for f in figures:
            if f.rate == rate:
                by_client.setdefault(f.client, []).append(f)
        medians = {c: statistics.median(f.us_per_record for f in fs) for c, fs in by_client.items()}
        for client, fs in by_client.items():
            spread = ", ".join(f"{f.us_per_record:.1f}" for f in fs)
            loop = statistics.median(f.loop_us_per_record for f in fs)
            print(
                f"    {client:<11} {medians[client]:7.1f} us  (rounds: {spread};"
                f" event loop thread {loop:.1f})"
            )
        if len(medians) == 2:
            print(
                f"    librdkafka / aiokafka = {medians['librdkafka'] / medians['aiokafka']:.2f}x;"
                f" {medians['aiokafka'] - medians['librdkafka']:+.1f} us per record"
            )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bootstrap:
        summary(asyncio.run(measure(args.bootstrap, args)))
        return 0
    from pa_devkit.localinfra.kafka import LocalKafka

    with LocalKafka(port=0) as kafka:
        print(f"local broker {kafka.bootstrap_servers} (Kafka {kafka.version})")
        summary(asyncio.run(measure(kafka.bootstrap_servers, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
