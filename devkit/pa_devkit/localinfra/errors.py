"""The one exception of ``pa_devkit.localinfra``: shared by the jar cache, broker and CLI."""

from __future__ import annotations


class LocalKafkaError(Exception):
    """The local broker could not be fetched, started or stopped; the message says why."""
