"""The repeat filter that keeps aiokafka's reconnect loop from flooding the log."""

from __future__ import annotations

import logging

from service.logs import RepeatFilter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_one_record_per_template_per_window_then_the_count_of_those_held_back() -> None:
    clock = Clock()
    repeats = RepeatFilter("aiokafka", window_s=30.0, clock=clock)
    template = "Unable connect to node with id %s: %s"

    passed = [repeats.filter(record("aiokafka", template, 1, "refused")) for _ in range(500)]
    assert passed.count(True) == 1

    clock.now = 30.0
    late = record("aiokafka", template, 1, "refused")
    assert repeats.filter(late)
    assert "repeated 499 more times in the last 30 s" in late.getMessage()
    assert late.getMessage().startswith("Unable connect to node with id 1: refused")


def test_templates_levels_and_other_loggers_are_counted_apart() -> None:
    repeats = RepeatFilter("aiokafka", window_s=30.0, clock=Clock())
    assert repeats.filter(record("aiokafka", "one %s", 1))
    assert repeats.filter(record("aiokafka", "two %s", 1))
    assert repeats.filter(record("aiokafka", "one %s", 1, level=logging.WARNING))
    assert repeats.filter(record("aiokafka.consumer", "one %s", 1))
    assert not repeats.filter(record("aiokafka", "one %s", 2))
    # Our own events are never held back, however often they repeat.
    assert all(repeats.filter(record("service.runner", "offsets.commit_failed")) for _ in range(5))
