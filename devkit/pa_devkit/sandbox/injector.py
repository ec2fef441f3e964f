"""The sandbox's fault injector: draws each request's fate from a :class:`FaultConfig`.

It owns what changes at run time: the current config (replaced by ``PUT
/_sandbox/faults``), the seeded random sources, the rate-limit bucket and the count of
faults injected by kind (reported by ``GET /_sandbox/ledger``). Count keys are
``error_<status>``, ``rate_limited``, ``hang``, ``reset`` and ``apply_then_drop``; a fault
is counted when it is carried out, not when it is drawn (a request drawn for
``apply_then_drop`` that turns out to be for an unknown account is answered 404 and not
counted).

Fates and latencies come from two separate random sources seeded from ``seed``, so the
sequence of fates does not depend on whether latency is sampled.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus

from pa_devkit.sandbox.envelope import ApiError, ReasonCode
from pa_devkit.sandbox.faults import ErrorFault, FaultConfig, HangFault
from pa_devkit.sandbox.ratelimit import TokenBucket, retry_after_seconds

RATE_LIMITED = "rate_limited"
_GATEWAY_STATUSES = frozenset({502, 503, 504})
_ALWAYS_REPORTED = (RATE_LIMITED, "hang", "reset", "apply_then_drop")


class FateKind(StrEnum):
    """What happens to one request, beyond the normal path."""

    NONE = "none"
    ERROR = "error"
    HANG = "hang"
    RESET = "reset"
    APPLY_THEN_DROP = "apply_then_drop"


@dataclass(frozen=True, slots=True)
class Fate:
    """The drawn fate of one request; ``error`` or ``hang`` hold the fault's settings."""

    kind: FateKind
    error: ErrorFault | None = None
    hang: HangFault | None = None

    @property
    def label(self) -> str:
        """The key this fate is counted under."""
        if self.error is not None:
            return f"error_{self.error.status}"
        return str(self.kind)


NO_FATE = Fate(FateKind.NONE)


class FaultInjector:
    """Carries out a :class:`FaultConfig`; replace the config at any time with :meth:`replace`.

    Args:
        config: the faults to inject at first.
        monotonic: the rate limit's clock, in seconds.
    """

    def __init__(
        self, config: FaultConfig, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._monotonic = monotonic
        self._counts: Counter[str] = Counter()
        self._config = config
        self._fate_rng, self._latency_rng, self._bucket = self._runtime(config)

    @property
    def config(self) -> FaultConfig:
        return self._config

    def replace(self, config: FaultConfig) -> None:
        """Inject ``config`` from now on: fresh random sources and a full bucket; counts stay."""
        self._config = config
        self._fate_rng, self._latency_rng, self._bucket = self._runtime(config)

    def check_rate_limit(self) -> None:
        """Take a token; when none is left, raise the gateway's 429 with ``Retry-After``."""
        if self._bucket is None:
            return
        wait = self._bucket.try_take()
        if wait <= 0:
            return
        self.count(RATE_LIMITED)
        raise ApiError.gateway(
            429,
            ReasonCode.TOO_MANY_REQUESTS,
            "Too Many Requests - rate limit exceeded",
            recoverable=True,
            headers={"Retry-After": str(retry_after_seconds(wait))},
        )

    def draw(self) -> Fate:
        """The fate of the next request: one draw over the exclusive fault rates."""
        config = self._config
        rates = config.fate_rates()
        if not any(rate > 0 for _, rate in rates):
            return NO_FATE
        point = self._fate_rng.random()
        cumulative = 0.0
        for error in config.errors:
            cumulative += error.rate
            if point < cumulative:
                return Fate(FateKind.ERROR, error=error)
        if config.hang is not None:
            cumulative += config.hang.rate
            if point < cumulative:
                return Fate(FateKind.HANG, hang=config.hang)
        if config.reset is not None:
            cumulative += config.reset.rate
            if point < cumulative:
                return Fate(FateKind.RESET)
        if config.apply_then_drop is not None:
            cumulative += config.apply_then_drop.rate
            if point < cumulative:
                return Fate(FateKind.APPLY_THEN_DROP)
        return NO_FATE

    def latency_seconds(self, default_ms: float) -> float:
        """The delay before applying: a sample of ``latency``, else ``default_ms``."""
        latency = self._config.latency
        ms = default_ms if latency is None else latency.sample_ms(self._latency_rng)
        return max(0.0, ms) / 1000

    def count(self, label: str) -> None:
        """Record one injected fault of kind ``label``."""
        self._counts[label] += 1

    def counts(self) -> dict[str, int]:
        """Injected faults by kind; the fixed kinds always appear, errors once seen."""
        result = dict.fromkeys(_ALWAYS_REPORTED, 0)
        result.update(self._counts)
        return dict(sorted(result.items()))

    def clear_counts(self) -> None:
        """Forget the counts (``POST /_sandbox/reset``)."""
        self._counts.clear()

    def _runtime(
        self, config: FaultConfig
    ) -> tuple[random.Random, random.Random, TokenBucket | None]:
        seed = config.seed
        fate_rng = random.Random(None if seed is None else f"fate:{seed}")
        latency_rng = random.Random(None if seed is None else f"latency:{seed}")
        limit = config.rate_limit
        bucket = (
            None
            if limit is None
            else TokenBucket(limit.rate_per_s, limit.burst, monotonic=self._monotonic)
        )
        return fate_rng, latency_rng, bucket


def injected_error(fault: ErrorFault) -> ApiError:
    """The answer of an injected error: Source Gateway for 502/503/504, else PAS."""
    description = f"{_phrase(fault.status)} (injected by the sandbox)"
    if fault.status in _GATEWAY_STATUSES:
        return ApiError.gateway(
            fault.status, fault.effective_reason_code, description, recoverable=fault.recoverable
        )
    return ApiError.pas(
        fault.status, fault.effective_reason_code, description, recoverable=fault.recoverable
    )


def hang_timeout() -> ApiError:
    """The gateway's 504 once a hang that does not apply has run its course."""
    return ApiError.gateway(
        504,
        ReasonCode.GATEWAY_TIMEOUT,
        "Gateway Timeout - PAS did not answer in time (injected by the sandbox)",
        recoverable=True,
    )


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"
