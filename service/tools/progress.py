"""A plain-text progress bar and a records-per-second pacer for operator tools.

Both take their clock (and the pacer its sleep) from the caller, so tests need no waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TextIO

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def render_bar(done: int, total: int, width: int = 30) -> str:
    """``[#####.....] 512/1000``: the share done, in ``width`` cells."""
    filled = width if total <= 0 else min(width, done * width // total)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def wants_progress(requested: bool, stream: TextIO) -> bool:
    """Show progress when asked to, or when ``stream`` is a terminal."""
    if requested:
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or exotic stream
        return False


class ProgressBar:
    """Redraws one line in place on a terminal; elsewhere writes a line now and then."""

    def __init__(
        self,
        total: int,
        stream: TextIO,
        *,
        enabled: bool,
        width: int = 30,
        clock: Clock = time.monotonic,
        interval_s: float | None = None,
    ) -> None:
        self.total = total
        self._stream = stream
        self._enabled = enabled
        self._width = width
        self._clock = clock
        self._live = enabled and wants_progress(False, stream)
        self._interval_s = interval_s if interval_s is not None else (0.1 if self._live else 2.0)
        self._last_drawn: float | None = None
        self._done = 0

    def update(self, done: int) -> None:
        """Note progress; drawn at most once per interval."""
        self._done = done
        if not self._enabled:
            return
        now = self._clock()
        if self._last_drawn is not None and now - self._last_drawn < self._interval_s:
            return
        self._last_drawn = now
        self._draw()

    def finish(self) -> None:
        """Draw the final state and end the line."""
        if not self._enabled:
            return
        self._draw()
        if self._live:
            self._stream.write("\n")
        self._stream.flush()

    def _draw(self) -> None:
        text = render_bar(self._done, self.total, self._width)
        self._stream.write(f"\r{text}" if self._live else f"{text}\n")
        self._stream.flush()


class Pacer:
    """Lets at most ``rate_per_s`` callers through per second (no limit when ``None``)."""

    def __init__(
        self,
        rate_per_s: float | None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate_per_s is not None and rate_per_s <= 0:
            raise ValueError("the rate must be positive")
        self._interval = 1.0 / rate_per_s if rate_per_s else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None

    async def wait(self) -> None:
        """Return when the next item may go."""
        if not self._interval:
            return
        now = self._clock()
        if self._next is None or self._next < now:
            self._next = now
        delay = self._next - now
        self._next += self._interval
        if delay > 0:
            await self._sleep(delay)
