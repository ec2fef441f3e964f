"""Publishing commands to the command topic (``points-adjuster send``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.codec.avro import COMMAND, AvroCodec
from service.domain.command import account_ref
from service.errors import PointsAdjusterError
from service.kafka.clients import open_producer
from service.settings import KafkaSettings

REQUIRED = (
    "idempotency_key",
    "bank_account_number",
    "points_to_adjust",
    "adjustment_type_code",
    "adjustment_reason",
    "adjusted_by",
    "correlation_id",
    "requested_by",
)


class InputError(PointsAdjusterError):
    """A line of a commands file is not a usable command."""


def command_key(command: dict[str, Any]) -> bytes | None:
    """The record key: the account reference, so one account's commands share a partition."""
    account = command.get("bank_account_number")
    return account_ref(account).encode() if isinstance(account, str) else None


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Commands from a JSON-lines file; ``occurred_at`` may be ISO-8601 or epoch millis."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            document = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{path}:{number}: not JSON ({exc})") from exc
        if not isinstance(document, dict):
            raise InputError(f"{path}:{number}: expected a JSON object")
        missing = [name for name in REQUIRED if name not in document]
        if missing:
            raise InputError(f"{path}:{number}: missing {', '.join(missing)}")
        occurred = document.get("occurred_at")
        if occurred is None:
            document["occurred_at"] = datetime.now(UTC)
        elif isinstance(occurred, str):
            try:
                document["occurred_at"] = datetime.fromisoformat(occurred)
            except ValueError as exc:
                raise InputError(f"{path}:{number}: occurred_at: {exc}") from exc
        document.setdefault("metadata", {})
        yield document


async def send_commands(
    settings: KafkaSettings,
    commands: Iterable[dict[str, Any]],
    *,
    codec: AvroCodec,
    raw_values: Iterable[bytes] = (),
) -> int:
    """Encode and publish; ``raw_values`` are sent as-is (to test undecodable records)."""
    sent = 0
    async with open_producer(settings) as producer:
        futures = []
        for command in commands:
            try:
                value = codec.encode(COMMAND, command)
            except (ValueError, TypeError) as exc:
                raise InputError(
                    f"command {command.get('idempotency_key')!r} does not fit the schema: {exc}"
                ) from exc
            futures.append(
                await producer.send(settings.command_topic, value=value, key=command_key(command))
            )
        for value in raw_values:
            futures.append(await producer.send(settings.command_topic, value=value))
        for future in futures:
            await future
            sent += 1
    return sent
