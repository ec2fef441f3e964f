"""The topics the service reads and writes, and ``points-adjuster topics`` creating them.

Brokers with ``auto.create.topics.enable=false`` (usual in production) refuse to publish to a
topic that does not exist, so every topic the service uses must be created beforehand:
:func:`service_topics` is the one list of them, used by ``topics`` (create), ``check``
(verify) and the service's start-up check.
"""

from __future__ import annotations

import argparse
from typing import TextIO

from service.kafka.clients import ensure_topics
from service.settings import KafkaSettings

DEFAULT_PARTITIONS = 3


def service_topics(settings: KafkaSettings) -> list[str]:
    """The topic names the service uses, each once, in this order: commands (read), then
    completed, failed, dead letters and review (written)."""
    names = [
        settings.command_topic,
        settings.completed_topic,
        settings.failed_topic,
        settings.dead_letter_topic,
        settings.review_topic,
    ]
    return list(dict.fromkeys(names))


def partitions_argument(text: str) -> int:
    """``--partitions``: a whole number, at least 1."""
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


async def create_service_topics(
    settings: KafkaSettings, partitions: int, *, out: TextIO
) -> list[str]:
    """Create every topic of :func:`service_topics` that is missing, with ``partitions``
    partitions each; print one line per topic (``created`` or ``exists``) and return the
    names created. Existing topics are left as they are."""
    names = service_topics(settings)
    created = await ensure_topics(settings, dict.fromkeys(names, partitions))
    for name in names:
        print(f"{name}: {'created' if name in created else 'exists'}", file=out)
    return created
