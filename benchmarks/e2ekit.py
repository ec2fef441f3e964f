"""The end-to-end rig the service benchmarks share: ``bench_throughput.py``,
``bench_stores.py`` (its replicas part) and ``bench_workers.py``.

A local Kafka broker (or one named on the command line) and the PAS sandbox started with the
run's development keys (``Rig``), topics per scenario, a backlog of commands produced onto
them, the service's readiness, the outcome topics read once at the end, a process's CPU; and
what every one of those scripts' ``main`` does around its own work: quiet logging, the facts
of the machine, a warning when it is busy before the run, the temporary folder, the notes
and problems of the rows, the JSON document, the last lines. The lower-level pieces (child
processes, /proc, the sandbox process, Prometheus text) are in ``benchkit.py``.

Imported by those scripts, run from the repository root (this folder is on ``sys.path``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from benchkit import (
    BenchError,
    Child,
    Children,
    Sandbox,
    cpu_times,
    filesystem_of,
    machine_busy_pct,
    raise_keyboard_interrupt_on_sigterm,
    start_sandbox,
)

from pa_devkit.demo import DEMO_CONSUMER_KEY
from pa_devkit.keys import DevKeySet, generate_dev_keyset
from service.codec.avro import COMMAND, COMPLETED, AvroCodec
from service.kafka.clients import ensure_topics, partitions_of
from service.settings import KafkaSettings
from service.tools.generate import generate_commands
from service.tools.send import command_key

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 90.0
SERVICE_SHUTDOWN_S = 10  # PA_SHUTDOWN_TIMEOUT_S of the service: a capped run stops quickly
STOP_WAIT_S = 40.0
READ_TIMEOUT_S = 180.0
REQUESTED_BY = "points-adjuster-bench"

T = TypeVar("T")


def fmt(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


# --- the broker, the sandbox, the keys -----------------------------------------------------


@dataclass
class Rig:
    """What every scenario of a run shares: the broker, the sandbox, the keys, the codec."""

    children: Children
    bootstrap: str
    broker_pid: int | None
    """None for a broker this run did not start (``--bootstrap-servers``)."""
    sandbox: Sandbox
    keyset: DevKeySet
    codec: AvroCodec
    workdir: Path


@contextlib.contextmanager
def local_broker(bootstrap_servers: str | None = None) -> Iterator[tuple[str, int | None, str]]:
    """(bootstrap servers, broker pid when we started it, Kafka version): a local KRaft broker
    for the run, or ``bootstrap_servers`` when given."""
    if bootstrap_servers:
        yield bootstrap_servers, None, "external"
        return
    from pa_devkit.localinfra.kafka import LocalKafka

    print("starting a local Kafka broker...", flush=True)
    with LocalKafka(port=0) as local:
        yield local.bootstrap_servers, local.pid, local.version


@contextlib.contextmanager
def started_rig(
    children: Children,
    workdir: Path,
    facts: dict[str, Any],
    *,
    latency_ms: float,
    plain_responses: bool = False,
    bootstrap_servers: str | None = None,
) -> Iterator[Rig]:
    """The broker, fresh development keys and the sandbox (signing and encryption on) for the
    body; on the way out every child process is stopped before the broker goes. Records the
    broker's Kafka version in ``facts``."""
    with local_broker(bootstrap_servers) as (bootstrap, broker_pid, kafka_version):
        facts["kafka"] = kafka_version
        try:
            keyset = generate_dev_keyset(workdir / "keys")
            sandbox = start_sandbox(
                children,
                keys_dir=keyset.directory,
                consumer_key=DEMO_CONSUMER_KEY,
                latency_ms=latency_ms,
                plain_responses=plain_responses,
                workdir=workdir,
            )
            yield Rig(
                children,
                bootstrap,
                broker_pid,
                sandbox,
                keyset,
                AvroCodec.from_directory(),
                workdir,
            )
        finally:
            children.stop_all()  # before the broker goes


# --- topics --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topology:
    """A scenario's topics and consumer group, all named after ``suffix``."""

    bootstrap: str
    suffix: str

    @property
    def names(self) -> dict[str, str]:
        return {
            "command": f"bench-{self.suffix}-commands",
            "completed": f"bench-{self.suffix}-completed",
            "failed": f"bench-{self.suffix}-failed",
            "dead_letter": f"bench-{self.suffix}-dlt",
            "review": f"bench-{self.suffix}-review",
        }

    def partitions(self, partitions: int) -> dict[str, int]:
        """Every topic's partition count: ``partitions`` for commands and outcomes, 1 for the
        dead-letter and review topics."""
        n = self.names
        return {
            n["command"]: partitions,
            n["completed"]: partitions,
            n["failed"]: partitions,
            n["dead_letter"]: 1,
            n["review"]: 1,
        }

    @property
    def group(self) -> str:
        return f"bench-{self.suffix}"

    def env(self) -> dict[str, str]:
        n = self.names
        return {
            "PA_KAFKA__GROUP_ID": self.group,
            "PA_KAFKA__COMMAND_TOPIC": n["command"],
            "PA_KAFKA__COMPLETED_TOPIC": n["completed"],
            "PA_KAFKA__FAILED_TOPIC": n["failed"],
            "PA_KAFKA__DEAD_LETTER_TOPIC": n["dead_letter"],
            "PA_KAFKA__REVIEW_TOPIC": n["review"],
        }


async def wait_for_leaders(bootstrap: str, topics: list[str], timeout_s: float = 30.0) -> None:
    """Wait until every partition of ``topics`` has a leader (fresh topics need a moment)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            described = await admin.describe_topics(topics)
            ready = len(described) == len(topics) and all(
                topic["error_code"] == 0
                and topic["partitions"]
                and all(p["error_code"] == 0 and p["leader"] >= 0 for p in topic["partitions"])
                for topic in described
            )
            if ready:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"topics {topics} have no leader after {timeout_s:.0f} s")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def create_topics(bootstrap: str, partitions: dict[str, int]) -> None:
    await ensure_topics(KafkaSettings(bootstrap_servers=bootstrap), partitions)
    await wait_for_leaders(bootstrap, list(partitions))


async def warm_up_broker(bootstrap: str, records: int = 20_000) -> float:
    """Produce and read back a few thousand records so the JVM's JIT is warm; seconds taken."""
    started = time.monotonic()
    topic = f"bench-warmup-{uuid.uuid4().hex[:6]}"
    await create_topics(bootstrap, {topic: 12})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        payload = b"w" * 300
        futures = [
            await producer.send(topic, value=payload, key=str(i % 1000).encode())
            for i in range(records)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"{topic}-group", auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        seen = 0
        deadline = time.monotonic() + 60
        while seen < records and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            seen += sum(len(messages) for messages in batches.values())
            await consumer.commit()
    finally:
        await consumer.stop()
    await delete_topics(bootstrap, [topic])
    return time.monotonic() - started


async def delete_topics(bootstrap: str, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(topics)
    finally:
        await admin.close()


async def discard(sandbox: Sandbox, topo: Topology) -> None:
    """After a scenario: the sandbox's ledger emptied and the scenario's topics deleted (never
    raises: the next scenario has fresh ones either way)."""
    with contextlib.suppress(Exception):
        await asyncio.to_thread(sandbox.reset)
    with contextlib.suppress(Exception):
        await delete_topics(topo.bootstrap, list(topo.names.values()))


# --- commands and outcomes -----------------------------------------------------------------


def backlog_commands(count: int, accounts: int, seed: int) -> list[dict[str, Any]]:
    """``count`` valid commands, no repeats, over ``accounts`` accounts; the same seed gives
    the same data."""
    batch = generate_commands(count, accounts=accounts, seed=seed, requested_by=REQUESTED_BY)
    return batch.commands


def encode_all(codec: AvroCodec, commands: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    return [(codec.encode(COMMAND, c), command_key(c) or b"") for c in commands]


async def produce_backlog(
    bootstrap: str, topic: str, commands: list[dict[str, Any]], codec: AvroCodec
) -> dict[str, int]:
    """Publish every command as fast as the broker takes them (acks=all); their timestamps."""
    records = encode_all(codec, commands)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        max_batch_size=512 * 1024,
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value=value, key=key) for value, key in records]
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return {c["idempotency_key"]: int(m.timestamp) for c, m in zip(commands, metadata, strict=True)}


@dataclass(frozen=True)
class OutcomeRecord:
    kind: str  # completed | failed
    key: str
    duplicate: bool
    reason: str | None
    timestamp_ms: int
    received_ms: int


async def read_outcome_records(
    bootstrap: str, topics: list[str], codec: AvroCodec
) -> list[OutcomeRecord]:
    settings = KafkaSettings(bootstrap_servers=bootstrap)
    described = await partitions_of(settings, topics)
    partitions = [TopicPartition(t, p) for t, numbers in described.items() for p in numbers]
    result: list[OutcomeRecord] = []
    if not partitions:
        return result
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        deadline = time.monotonic() + READ_TIMEOUT_S
        while remaining:
            if time.monotonic() > deadline:
                raise BenchError(f"reading the outcomes took over {READ_TIMEOUT_S:.0f} s")
            batches = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            for messages in batches.values():
                for message in messages:
                    name, event = codec.decode(message.value)
                    received = event.get("received_at")
                    result.append(
                        OutcomeRecord(
                            kind="completed" if name == COMPLETED else "failed",
                            key=str(event["idempotency_key"]),
                            duplicate=bool(event.get("duplicate")),
                            reason=event.get("reason_code"),
                            timestamp_ms=int(message.timestamp),
                            received_ms=(
                                int(received.timestamp() * 1000)
                                if isinstance(received, datetime)
                                else int(message.timestamp)
                            ),
                        )
                    )
            # By position, not by the last record's offset: under transactions the last
            # offsets of a partition are commit markers, which are never handed out.
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return result
    finally:
        await consumer.stop()


# --- the service ---------------------------------------------------------------------------


async def wait_ready(child: Child, http: httpx.AsyncClient) -> float:
    """Poll /readyz; the wall-clock moment it first answered 200."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if not child.alive:
            raise BenchError(f"the service exited before it was ready:\n{child.log_tail()}")
        try:
            if (await http.get("/readyz")).status_code == 200:
                return time.time()
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    raise BenchError(f"the service was not ready after {READY_TIMEOUT_S:.0f} s")


def start_service(children: Children, name: str, env: dict[str, str], folder: Path) -> Child:
    """``points-adjuster run`` (``python -m service run``) in ``folder``, its log there."""
    return children.start(
        name,
        [sys.executable, "-m", "service", "run"],
        env=env,
        cwd=folder,
        log_path=folder / "service.log",
    )


def process_cpu(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    try:
        return sum(cpu_times(pid))
    except OSError:
        return float("nan")


# --- main ----------------------------------------------------------------------------------


def quiet_logging() -> None:
    """Warnings only, aiokafka silent, and SIGTERM as KeyboardInterrupt (so every child is
    stopped). aiokafka logs each retry of a produce to a partition whose leader is still
    being elected, and the coordinator's first moments on a fresh broker; it retries by
    itself and raises what it cannot overcome, so its log is only noise here."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    raise_keyboard_interrupt_on_sigterm()


def git_facts() -> dict[str, Any]:
    def run(*args: str) -> str:
        completed = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        )
        return completed.stdout.strip()

    changed = [line for line in run("status", "--porcelain", "--", "service").splitlines() if line]
    return {"commit": run("rev-parse", "--short", "HEAD"), "service_changes": changed}


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_facts(**after_python: Any) -> dict[str, Any]:
    """The machine, the interpreter and the commit (``after_python``: more versions, placed
    after Python's in the JSON)."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        **after_python,
        "loadavg_at_start": os.getloadavg(),
        "git": git_facts(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def describe_machine(facts: dict[str, Any]) -> str:
    """``2 CPUs (model), python 3.11.7, commit abc1234 + 0 changed file(s) in service/``."""
    return (
        f"{facts['cpus']} CPUs ({facts['cpu_model']}), python {facts['python']}, commit"
        f" {facts['git']['commit']} + {len(facts['git']['service_changes'])} changed file(s)"
        " in service/"
    )


def warn_if_busy(facts: dict[str, Any], consequence: str) -> None:
    """One second of the machine's busy share before anything starts, in ``facts``; a
    warning that ends in ``consequence`` above 10 %."""
    idle = machine_busy_pct(1.0)
    facts["machine_busy_pct_before"] = idle
    if idle > 10:
        print(
            f"WARNING: the machine is already {idle:.0f} % busy before this run starts (other"
            f" processes): {consequence}",
            flush=True,
        )


def make_workdir(prefix: str, parent: Path | None, facts: dict[str, Any]) -> Path:
    """The run's temporary folder (below ``parent`` when given) and its filesystem in facts."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    facts["workdir_filesystem"] = filesystem_of(workdir)
    return workdir


def guarded(script: str, body: Callable[[], T], empty: T) -> tuple[T, int]:
    """``body``'s value and exit status 0; ``empty`` and 130 when interrupted, 1 when it
    raised ``BenchError`` (its message printed, prefixed with ``script``)."""
    try:
        return body(), 0
    except KeyboardInterrupt:
        print("\ninterrupted: every process this run started was stopped", file=sys.stderr)
        return empty, 130
    except BenchError as exc:
        print(f"{script}: {exc}", file=sys.stderr)
        return empty, 1


class Reported(Protocol):
    """A row with the notes and problems its run gathered."""

    @property
    def name(self) -> str: ...

    @property
    def notes(self) -> list[str]: ...

    @property
    def problems(self) -> list[str]: ...


def print_problems(rows: Sequence[Reported]) -> bool:
    """Every row's notes (stdout), then their problems (stderr); whether there was any."""
    any_problem = False
    for r in rows:
        for note in r.notes:
            print(f"  note {r.name}: {note}")
    for r in rows:
        for problem in r.problems:
            any_problem = True
            print(f"  PROBLEM {r.name}: {problem}", file=sys.stderr)
    return any_problem


def write_figures(path: Path, document: dict[str, Any]) -> None:
    """``document`` as JSON at ``path`` (its folder made): NaN as null, infinities as the
    strings +Inf/-Inf (a histogram's last bound), paths as text."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, float) and math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(document), indent=2) + "\n")
    print(f"figures written to {path}")


def finish(
    status: int,
    elapsed: float,
    facts: dict[str, Any],
    workdir: Path,
    keep_workdir: bool,
    what: str,
) -> None:
    """The last lines: the run's length and where ``what`` (the SQLite files) lived; the
    temporary folder kept (said) after a failure or with ``keep_workdir``, else removed."""
    print(
        f"\n{elapsed / 60:.1f} min in all; {what} on {facts['workdir_filesystem']}"
        f" ({workdir.parent})"
    )
    if status != 0 or keep_workdir:
        print(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
