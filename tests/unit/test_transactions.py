"""The transactional producer's adapter (``service.kafka.transactions``) over a fake of
aiokafka's producer: its id, its calls, and its replacement after a failure."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from pydantic import ValidationError

from service.kafka import transactions as transactions_module
from service.kafka.transactions import KafkaTransactions, transactional_id
from service.settings import KafkaSettings

TP = TopicPartition("commands", 0)


class FakeClient:
    """aiokafka's producer as far as the adapter uses it; records its calls."""

    def __init__(self, log: list[str], *, start_fails: bool = False, stop_hangs: bool = False):
        self.log = log
        self.start_fails = start_fails
        self.stop_hangs = stop_hangs
        self.offsets: list[tuple[dict[TopicPartition, int], str]] = []

    async def start(self) -> None:
        self.log.append("start")
        if self.start_fails:
            raise KafkaConnectionError("no broker")

    async def stop(self) -> None:
        self.log.append("stop")
        if self.stop_hangs:
            await asyncio.Event().wait()

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        self.log.append(f"send {topic}")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def begin_transaction(self) -> None:
        self.log.append("begin")

    async def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, int], group_id: str
    ) -> None:
        self.log.append("offsets")
        self.offsets.append((dict(offsets), group_id))

    async def commit_transaction(self) -> None:
        self.log.append("commit")


def test_the_transactional_id_names_the_group_and_the_static_member() -> None:
    """With a group instance id (the pod's name) the id is stable across restarts, so a
    restarted pod fences its predecessor; without one, each process has its own."""
    static = KafkaSettings(group_id="pa", group_instance_id="points-adjuster-0")
    assert transactional_id(static) == "points-adjuster-pa-points-adjuster-0"
    dynamic = KafkaSettings(group_id="pa")
    assert transactional_id(dynamic, suffix=lambda: "abc") == "points-adjuster-pa-abc"
    assert transactional_id(dynamic) != transactional_id(dynamic)


def test_transactions_are_off_by_default_and_the_timeout_is_bounded() -> None:
    """Off unless asked for; a timeout under the 10 s floor or over the broker's default
    ceiling (15 minutes) is refused."""
    settings = KafkaSettings()
    assert settings.transactions is False
    assert settings.transaction_timeout_ms == 60_000
    for wrong in (5_000, 900_001):
        with pytest.raises(ValidationError):
            KafkaSettings(transaction_timeout_ms=wrong)


async def test_calls_go_to_the_current_producer_with_the_group_id() -> None:
    """A transaction: begin, a send, the offsets for the service's group, the commit."""
    log: list[str] = []
    client = FakeClient(log)
    transactions = KafkaTransactions(lambda: client, group_id="pa")
    await transactions.start()
    await transactions.begin()
    await transactions.send("outcomes", value=b"v")
    await transactions.send_offsets({TP: 3})
    await transactions.commit()
    await transactions.stop()
    assert log == ["start", "begin", "send outcomes", "offsets", "commit", "stop"]
    assert client.offsets == [({TP: 3}, "pa")]


async def test_renew_stops_the_failed_producer_and_starts_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old producer is stopped (a stop that hangs is given up on), then a new one is
    started; later calls go to the new one."""
    monkeypatch.setattr(transactions_module, "OLD_PRODUCER_STOP_S", 0.01)
    log: list[str] = []
    made: list[FakeClient] = []

    def make() -> FakeClient:
        made.append(FakeClient(log, stop_hangs=not made))
        return made[-1]

    transactions = KafkaTransactions(make, group_id="pa")
    await transactions.start()
    await transactions.renew()
    await transactions.begin()
    assert log == ["start", "stop", "start", "begin"]
    assert transactions.generation == 2
    assert len(made) == 2


async def test_a_producer_that_fails_to_start_is_stopped_and_nothing_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failed start stops what it started; calls before a good start fail as Kafka errors
    (the runner treats them as a failed transaction)."""
    monkeypatch.setattr(transactions_module, "OLD_PRODUCER_STOP_S", 0.01)
    log: list[str] = []
    transactions = KafkaTransactions(lambda: FakeClient(log, start_fails=True), group_id="pa")
    with pytest.raises(KafkaConnectionError):
        await transactions.start()
    assert log == ["start", "stop"]
    with pytest.raises(KafkaError):
        await transactions.begin()


def test_aiokafkas_producer_takes_every_call_the_adapter_makes() -> None:
    """aiokafka's producer (untyped, so mypy cannot tell) accepts each call of the adapter."""
    calls: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
        "start": ((), {}),
        "stop": ((), {}),
        "begin_transaction": ((), {}),
        "send_offsets_to_transaction": (({TP: 1}, "pa"), {}),
        "commit_transaction": ((), {}),
        "send": (
            ("t",),
            {"value": b"v", "key": None, "partition": None, "timestamp_ms": None, "headers": []},
        ),
    }
    for name, (args, kwargs) in calls.items():
        method = getattr(AIOKafkaProducer, name)
        inspect.signature(method).bind(None, *args, **kwargs)
        assert inspect.iscoroutinefunction(method), name
