"""What can go wrong on purpose: the sandbox's fault-injection settings and their JSON form.

:class:`FaultConfig` is a frozen value, set at start-up (``SandboxConfig.faults``, the
CLI's ``--faults FILE.json``) and replaced at run time (``PUT /_sandbox/faults``). Its JSON
form, every key optional (``{}`` is "no faults")::

    {
      "seed": 42,
      "latency": {"kind": "lognormal", "ms": 20, "p99_ms": 250, "max_ms": 2000},
      "errors": [{"status": 503, "rate": 0.05, "recoverable": true},
                 {"status": 500, "rate": 0.01, "recoverable": false,
                  "reason_code": "SYSTEM_ERROR"}],
      "rate_limit": {"rate_per_s": 200, "burst": 50},
      "hang": {"rate": 0.01, "seconds": 30, "applies": true},
      "reset": {"rate": 0.01},
      "apply_then_drop": {"rate": 0.01}
    }

- ``latency``: ``{"kind": "fixed", "ms": m}``, ``{"kind": "uniform", "min_ms": a,
  "max_ms": b}`` or ``{"kind": "lognormal", "ms": median, "p99_ms": p99, "max_ms": cap}``
  (``max_ms`` optional). Absent: the fixed ``SandboxConfig.latency_ms``.
- ``errors``: an injected error answer per status (400..599, each status once);
  ``recoverable`` (default false) is the envelope's ``Recoverable``; ``reason_code``
  defaults to the status's name (``SERVICE_UNAVAILABLE``).
- ``rate_limit``: a token bucket; past it, 429 with ``Retry-After``.
- ``hang``: the request waits ``seconds`` and then, with ``applies``, carries on as usual
  (else the gateway's 504).
- ``reset``: the connection is reset without an answer; nothing applied.
- ``apply_then_drop``: the adjustment is applied, then the connection is dropped unanswered.

The rates of ``errors``, ``hang``, ``reset`` and ``apply_then_drop`` are the chances of
mutually exclusive fates of one request, so they must add up to at most 1. ``seed`` makes
the draws reproducible (``null``: seeded from the OS).

Invalid input raises :class:`FaultConfigError` (a ``ValueError``) naming the offending key.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from statistics import NormalDist
from typing import Any, ClassVar, TypeVar

MAX_HANG_SECONDS = 3600.0
Z_99 = NormalDist().inv_cdf(0.99)
"""The standard normal's 99th percentile (about 2.326): p99 = median * exp(sigma * Z_99)."""

_REASON_CODE = re.compile(r"[A-Z0-9_]{1,64}")
_RATE_TOLERANCE = 1e-9

_T = TypeVar("_T")


class FaultConfigError(ValueError):
    """A fault configuration is invalid; the message names the key and what is wrong."""


# --- latency --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FixedLatency:
    """Always ``ms`` milliseconds."""

    ms: float
    kind: ClassVar[str] = "fixed"

    def __post_init__(self) -> None:
        _check_non_negative("latency.ms", self.ms)

    def sample_ms(self, rng: random.Random) -> float:
        """The delay of one request, in milliseconds."""
        return float(self.ms)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "ms": self.ms}


@dataclass(frozen=True, slots=True)
class UniformLatency:
    """Uniform between ``min_ms`` and ``max_ms``."""

    min_ms: float
    max_ms: float
    kind: ClassVar[str] = "uniform"

    def __post_init__(self) -> None:
        _check_non_negative("latency.min_ms", self.min_ms)
        _check_non_negative("latency.max_ms", self.max_ms)
        if self.max_ms < self.min_ms:
            raise FaultConfigError("latency.max_ms must not be below latency.min_ms")

    def sample_ms(self, rng: random.Random) -> float:
        """The delay of one request, in milliseconds."""
        return rng.uniform(self.min_ms, self.max_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "min_ms": self.min_ms, "max_ms": self.max_ms}


@dataclass(frozen=True, slots=True)
class LognormalLatency:
    """Lognormal with median ``ms`` and 99th percentile ``p99_ms``, optionally capped.

    A long right tail, as real service latencies have: sigma = ln(p99_ms / ms) / Z_99.
    """

    ms: float
    p99_ms: float
    max_ms: float | None = None
    kind: ClassVar[str] = "lognormal"

    def __post_init__(self) -> None:
        _check_positive("latency.ms", self.ms)
        _check_positive("latency.p99_ms", self.p99_ms)
        if self.p99_ms < self.ms:
            raise FaultConfigError("latency.p99_ms must not be below latency.ms (the median)")
        if self.max_ms is not None:
            _check_positive("latency.max_ms", self.max_ms)
            if self.max_ms < self.ms:
                raise FaultConfigError("latency.max_ms must not be below latency.ms (the median)")

    @property
    def sigma(self) -> float:
        return math.log(self.p99_ms / self.ms) / Z_99

    def sample_ms(self, rng: random.Random) -> float:
        """The delay of one request, in milliseconds."""
        value = rng.lognormvariate(math.log(self.ms), self.sigma)
        return value if self.max_ms is None else min(value, self.max_ms)

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"kind": self.kind, "ms": self.ms, "p99_ms": self.p99_ms}
        if self.max_ms is not None:
            result["max_ms"] = self.max_ms
        return result


Latency = FixedLatency | UniformLatency | LognormalLatency


# --- the faults -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorFault:
    """Answer ``status`` with an error envelope, at ``rate``; nothing is applied."""

    status: int
    rate: float
    recoverable: bool = False
    reason_code: str | None = None

    def __post_init__(self) -> None:
        where = f"errors[status={self.status}]"
        if isinstance(self.status, bool) or not isinstance(self.status, int):
            raise FaultConfigError("errors[].status must be an integer")
        if not 400 <= self.status <= 599:
            raise FaultConfigError(f"{where}.status must be within 400..599")
        _check_rate(f"{where}.rate", self.rate)
        _check_bool(f"{where}.recoverable", self.recoverable)
        if self.reason_code is not None and (
            not isinstance(self.reason_code, str) or not _REASON_CODE.fullmatch(self.reason_code)
        ):
            raise FaultConfigError(f"{where}.reason_code must match [A-Z0-9_]{{1,64}}")

    @property
    def effective_reason_code(self) -> str:
        """``reason_code``, else the status's name in upper snake case."""
        if self.reason_code is not None:
            return self.reason_code
        try:
            return HTTPStatus(self.status).name
        except ValueError:
            return f"HTTP_{self.status}"

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "status": self.status,
            "rate": self.rate,
            "recoverable": self.recoverable,
        }
        if self.reason_code is not None:
            result["reason_code"] = self.reason_code
        return result


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: ``burst`` requests at once, refilled at ``rate_per_s``."""

    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        _check_positive("rate_limit.rate_per_s", self.rate_per_s)
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise FaultConfigError("rate_limit.burst must be an integer of at least 1")

    def to_dict(self) -> dict[str, Any]:
        return {"rate_per_s": self.rate_per_s, "burst": self.burst}


@dataclass(frozen=True, slots=True)
class HangFault:
    """Wait ``seconds`` before going on (``applies``) or answering the gateway's 504."""

    rate: float
    seconds: float
    applies: bool = False

    def __post_init__(self) -> None:
        _check_rate("hang.rate", self.rate)
        _check_positive("hang.seconds", self.seconds)
        if self.seconds > MAX_HANG_SECONDS:
            raise FaultConfigError(f"hang.seconds must be at most {MAX_HANG_SECONDS:g}")
        _check_bool("hang.applies", self.applies)

    def to_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "seconds": self.seconds, "applies": self.applies}


@dataclass(frozen=True, slots=True)
class ResetFault:
    """Reset the connection without an answer, at ``rate``; nothing is applied."""

    rate: float

    def __post_init__(self) -> None:
        _check_rate("reset.rate", self.rate)

    def to_dict(self) -> dict[str, Any]:
        return {"rate": self.rate}


@dataclass(frozen=True, slots=True)
class ApplyThenDropFault:
    """Apply the adjustment, then drop the connection without an answer, at ``rate``."""

    rate: float

    def __post_init__(self) -> None:
        _check_rate("apply_then_drop.rate", self.rate)

    def to_dict(self) -> dict[str, Any]:
        return {"rate": self.rate}


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Every injected fault; the default injects none (see the module docstring)."""

    seed: int | None = None
    latency: Latency | None = None
    errors: tuple[ErrorFault, ...] = ()
    rate_limit: RateLimit | None = None
    hang: HangFault | None = None
    reset: ResetFault | None = None
    apply_then_drop: ApplyThenDropFault | None = None

    def __post_init__(self) -> None:
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise FaultConfigError("seed must be an integer or null")
        statuses = [error.status for error in self.errors]
        repeated = sorted({s for s in statuses if statuses.count(s) > 1})
        if repeated:
            raise FaultConfigError(f"errors lists status {repeated[0]} more than once")
        total = sum(rate for _, rate in self.fate_rates())
        if total > 1 + _RATE_TOLERANCE:
            raise FaultConfigError(
                "the rates of errors, hang, reset and apply_then_drop are exclusive chances "
                f"and must add up to at most 1, got {total:g}"
            )

    @property
    def is_empty(self) -> bool:
        """True when nothing at all is injected."""
        return self == FaultConfig(seed=self.seed)

    def fate_rates(self) -> list[tuple[str, float]]:
        """``(fate, rate)`` of each exclusive fate, in draw order: errors, hang, reset, drop."""
        rates = [(f"error_{error.status}", error.rate) for error in self.errors]
        if self.hang is not None:
            rates.append(("hang", self.hang.rate))
        if self.reset is not None:
            rates.append(("reset", self.reset.rate))
        if self.apply_then_drop is not None:
            rates.append(("apply_then_drop", self.apply_then_drop.rate))
        return rates

    # JSON ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON object form; :meth:`from_dict` reads it back to an equal config."""
        return {
            "seed": self.seed,
            "latency": None if self.latency is None else self.latency.to_dict(),
            "errors": [error.to_dict() for error in self.errors],
            "rate_limit": None if self.rate_limit is None else self.rate_limit.to_dict(),
            "hang": None if self.hang is None else self.hang.to_dict(),
            "reset": None if self.reset is None else self.reset.to_dict(),
            "apply_then_drop": (
                None if self.apply_then_drop is None else self.apply_then_drop.to_dict()
            ),
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as a JSON text."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> FaultConfig:
        """Parse and validate a JSON text; :class:`FaultConfigError` says what is wrong."""
        try:
            document = json.loads(text, parse_constant=_reject_constant)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FaultConfigError(f"the fault configuration is not valid JSON: {exc}") from exc
        return cls.from_dict(document)

    @classmethod
    def from_dict(cls, document: object) -> FaultConfig:
        """Validate a decoded JSON value; :class:`FaultConfigError` says what is wrong."""
        obj = _object("faults", document, _TOP_KEYS)
        errors = obj.get("errors")
        if errors is not None and not isinstance(errors, list):
            raise FaultConfigError("errors must be a list")
        return cls(
            seed=obj.get("seed"),
            latency=_optional(obj, "latency", _latency_from),
            errors=tuple(_error_from(f"errors[{i}]", item) for i, item in enumerate(errors or [])),
            rate_limit=_optional(obj, "rate_limit", _rate_limit_from),
            hang=_optional(obj, "hang", _hang_from),
            reset=_optional(obj, "reset", lambda v: ResetFault(_rate_from("reset", v))),
            apply_then_drop=_optional(
                obj,
                "apply_then_drop",
                lambda v: ApplyThenDropFault(_rate_from("apply_then_drop", v)),
            ),
        )


# --- parsing helpers ------------------------------------------------------------------------

_TOP_KEYS = ("seed", "latency", "errors", "rate_limit", "hang", "reset", "apply_then_drop")


def _latency_from(value: object) -> Latency:
    kind = _object("latency", value, ("kind", "ms", "p99_ms", "min_ms", "max_ms")).get("kind")
    if kind == "fixed":
        obj = _object("latency", value, ("kind", "ms"))
        return FixedLatency(_number(obj, "latency", "ms"))
    if kind == "uniform":
        obj = _object("latency", value, ("kind", "min_ms", "max_ms"))
        return UniformLatency(_number(obj, "latency", "min_ms"), _number(obj, "latency", "max_ms"))
    if kind == "lognormal":
        obj = _object("latency", value, ("kind", "ms", "p99_ms", "max_ms"))
        cap = obj.get("max_ms")
        return LognormalLatency(
            _number(obj, "latency", "ms"),
            _number(obj, "latency", "p99_ms"),
            None if cap is None else _number(obj, "latency", "max_ms"),
        )
    raise FaultConfigError('latency.kind must be one of "fixed", "uniform", "lognormal"')


def _error_from(where: str, value: object) -> ErrorFault:
    obj = _object(where, value, ("status", "rate", "recoverable", "reason_code"))
    status = _required(obj, where, "status")
    if isinstance(status, bool) or not isinstance(status, int):
        raise FaultConfigError(f"{where}.status must be an integer")
    return ErrorFault(
        status=status,
        rate=_number(obj, where, "rate"),
        recoverable=obj.get("recoverable", False),
        reason_code=obj.get("reason_code"),
    )


def _rate_limit_from(value: object) -> RateLimit:
    obj = _object("rate_limit", value, ("rate_per_s", "burst"))
    burst = _required(obj, "rate_limit", "burst")
    return RateLimit(_number(obj, "rate_limit", "rate_per_s"), burst)


def _hang_from(value: object) -> HangFault:
    obj = _object("hang", value, ("rate", "seconds", "applies"))
    return HangFault(
        _number(obj, "hang", "rate"),
        _number(obj, "hang", "seconds"),
        obj.get("applies", False),
    )


def _rate_from(name: str, value: object) -> float:
    return _number(_object(name, value, ("rate",)), name, "rate")


def _object(where: str, value: object, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FaultConfigError(f"{where} must be a JSON object")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise FaultConfigError(
            f"{where} has unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})"
        )
    return value


def _optional(obj: Mapping[str, Any], key: str, parse: Callable[[object], _T]) -> _T | None:
    value = obj.get(key)
    return None if value is None else parse(value)


def _required(obj: Mapping[str, Any], where: str, key: str) -> Any:
    if obj.get(key) is None:
        raise FaultConfigError(f"{where}.{key} is required")
    return obj[key]


def _number(obj: Mapping[str, Any], where: str, key: str) -> float:
    value = _required(obj, where, key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FaultConfigError(f"{where}.{key} must be a number")
    return value


def _check_non_negative(name: str, value: float) -> None:
    _check_number(name, value)
    if value < 0:
        raise FaultConfigError(f"{name} must not be negative, got {value:g}")


def _check_positive(name: str, value: float) -> None:
    _check_number(name, value)
    if value <= 0:
        raise FaultConfigError(f"{name} must be positive, got {value:g}")


def _check_rate(name: str, value: float) -> None:
    _check_number(name, value)
    if not 0 <= value <= 1:
        raise FaultConfigError(f"{name} must be within 0..1, got {value:g}")


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FaultConfigError(f"{name} must be a finite number")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise FaultConfigError(f"{name} must be true or false")


def _reject_constant(name: str) -> Any:
    raise FaultConfigError(f"the fault configuration holds {name}, which JSON does not allow")
