"""The one exception of ``service.localinfra``, shared by the jar cache, the broker and the CLI."""

from __future__ import annotations


class LocalKafkaError(Exception):
    """The local broker could not be fetched, started or stopped; the message says why."""
