"""Structured logging: events with stable names and key-values, as JSON lines or console text."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import structlog

# Keys that must never reach a log line whatever a caller passes.
FORBIDDEN_KEYS = frozenset(
    {"bank_account_number", "bankAccountNumber", "password", "private_key", "secret", "body"}
)


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in FORBIDDEN_KEYS.intersection(event):
        event[key] = "[redacted]"
    return event


class RepeatFilter(logging.Filter):
    """Lets one record of each template of ``prefix``'s loggers through per ``window_s``.

    aiokafka logs every failed reconnect (several lines every 100 ms while a broker is
    down); an on-call engineer needs the first line and how often it recurred, not
    thousands. The first record after a quiet window carries ``repeated`` (how many were
    held back).
    """

    def __init__(
        self,
        prefix: str = "aiokafka",
        window_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._prefix = prefix
        self._window_s = window_s
        self._clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefix):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        shown_at, held = self._seen.get(key, (float("-inf"), 0))
        if now - shown_at < self._window_s:
            self._seen[key] = (shown_at, held + 1)
            return False
        if len(self._seen) > 1000:  # templates are few; this only guards against surprises
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            window = f"{self._window_s:g} s"
            record.msg = f"{record.msg} (repeated {held} more times in the last {window})"
        return True


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Route structlog and the standard library's logging to stderr in one format."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiokafka", "kafka", "httpx", "httpcore", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # While PostgreSQL is down, asyncpg's pool warns with a traceback at every reconnect try
    # (1 s to 60 s apart); the service already says the store is unavailable, once per fault.
    logging.getLogger("asyncpg.pool").setLevel(max(logging.ERROR, logging.getLevelName(level)))
    handler.addFilter(RepeatFilter("aiokafka"))
