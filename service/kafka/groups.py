"""What the broker knows of the service's consumer group: its committed offsets.

Read once at start-up, before the consumer joins the group, by the continuity check of the
idempotency store (``service.idempotency.continuity``): a group that has committed offsets
has processed commands, so a store that comes up empty next to it was lost or replaced.

The answer must not say "no offsets" when the broker could not tell. aiokafka's
``list_consumer_group_offsets`` returns an empty answer when the broker refuses the request
as a whole (for instance while the group's coordinator is still loading after a restart),
so the partitions are asked for by name: the broker answers for every partition asked
(offset -1 where none was committed), and a partition missing from the answer means the
request failed. That, and the coordinator not being available yet, is retried until
``startup_timeout_s``; then ``StartupError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from service.errors import StartupError
from service.kafka.security import client_security, start_failure
from service.settings import KafkaSettings

log = structlog.get_logger("service.kafka")

SERVERS_SETTING = "PA_KAFKA__BOOTSTRAP_SERVERS"
RETRY_S = 0.5
"""Pause between two tries while the group's coordinator is not ready."""


class _GroupNotReadyError(Exception):
    """The broker answered without the partitions asked for: it refused the whole request."""


async def committed_offsets(
    settings: KafkaSettings, *, admin_client: Callable[..., Any] = AIOKafkaAdminClient
) -> dict[int, int]:
    """The committed offsets of ``settings.group_id`` on ``settings.command_topic``.

    By partition; partitions without a committed offset are left out, so a group that never
    committed (or a topic that does not exist) gives ``{}``. Bounded by
    ``settings.startup_timeout_s`` as a whole; ``StartupError`` when the broker cannot be
    reached or does not answer in time. ``admin_client`` builds the admin client (a fake in
    tests), with ``AIOKafkaAdminClient``'s keyword arguments.
    """
    admin = admin_client(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-admin",
        request_timeout_ms=settings.request_timeout_ms,
        **client_security(settings),
    )
    last = "no answer"
    try:
        async with asyncio.timeout(settings.startup_timeout_s):
            try:
                await admin.start()
            except (KafkaError, OSError) as exc:
                refused = await start_failure(settings, "admin client", exc)
                raise (refused or _unreachable(settings, _reason(exc))) from exc
            while True:
                try:
                    return await _fetch(admin, settings)
                except _GroupNotReadyError as exc:
                    last = str(exc)
                except KafkaError as exc:
                    if not exc.retriable:
                        raise _failed(settings, _reason(exc)) from exc
                    last = _reason(exc)
                log.debug("kafka.group_offsets_retry", group=settings.group_id, reason=last)
                await asyncio.sleep(RETRY_S)
    except TimeoutError as exc:
        raise _unreachable(
            settings, f"no answer within {settings.startup_timeout_s:g} s; last: {last}"
        ) from exc
    finally:
        await admin.close()


async def _fetch(admin: Any, settings: KafkaSettings) -> dict[int, int]:
    topic = settings.command_topic
    # list_topics first: describing a missing topic would let the broker auto-create it.
    if topic not in await admin.list_topics():
        return {}
    described = await admin.describe_topics([topic])
    entry = next((item for item in described if item["topic"] == topic), None)
    if entry is None or entry["error_code"]:
        code = entry["error_code"] if entry else "none"
        raise _GroupNotReadyError(f"the topic's metadata is not ready (error code {code})")
    asked = [TopicPartition(topic, item["partition"]) for item in entry["partitions"]]
    if not asked:
        raise _GroupNotReadyError("the topic's metadata lists no partitions yet")
    answer = await admin.list_consumer_group_offsets(settings.group_id, partitions=asked)
    missing = [tp.partition for tp in asked if tp not in answer]
    if missing:
        raise _GroupNotReadyError(
            f"the group coordinator answered without partitions {missing} (it refused the"
            " request, for instance while loading)"
        )
    return {
        tp.partition: int(answer[tp].offset)
        for tp in sorted(asked, key=lambda tp: tp.partition)
        if answer[tp].offset >= 0
    }


def _reason(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return text if name in text else f"{name}: {text}" if text else name


def _unreachable(settings: KafkaSettings, reason: str) -> StartupError:
    return StartupError(
        "Kafka admin client",
        f"cannot read the committed offsets of consumer group {settings.group_id} on"
        f" {settings.command_topic} from the broker at {settings.bootstrap_servers} ({reason})",
        setting=SERVERS_SETTING,
    )


def _failed(settings: KafkaSettings, reason: str) -> StartupError:
    return StartupError(
        "Kafka admin client",
        f"the broker at {settings.bootstrap_servers} refused to give the committed offsets of"
        f" consumer group {settings.group_id} on {settings.command_topic} ({reason})",
    )
