"""Subject names, as Confluent's serializers derive them (``subject.name.strategy``)."""

from __future__ import annotations

from typing import Literal

SubjectStrategy = Literal["topic", "record", "topic_record"]


def subject_name(strategy: SubjectStrategy, topic: str, full_name: str) -> str:
    """The value subject of a record of ``full_name`` on ``topic`` under ``strategy``:
    ``topic`` → ``<topic>-value`` (TopicNameStrategy, Confluent's default), ``record`` →
    ``<full name>`` (RecordNameStrategy), ``topic_record`` → ``<topic>-<full name>``
    (TopicRecordNameStrategy)."""
    if strategy == "topic":
        return f"{topic}-value"
    if strategy == "record":
        return full_name
    return f"{topic}-{full_name}"
