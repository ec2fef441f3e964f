"""The exception tree of points-adjuster.

PointsAdjusterError            base; ``retriable`` says whether trying again may help
├── ConfigError                a setting is wrong; names the setting
├── StartupError               a dependency is unreachable or unusable at start-up
├── UndecodableRecordError     a Kafka record is not a readable command (``reason`` code)
└── PasError                   calling PAS failed (see ``service.pas.errors``)
"""

from __future__ import annotations


class PointsAdjusterError(Exception):
    """Base class of every error this package raises on purpose."""

    retriable: bool = False


class ConfigError(PointsAdjusterError):
    """A setting has a wrong value; the message names the setting and what is wrong."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


class StartupError(PointsAdjusterError):
    """A dependency (broker, store, key file) cannot be used; the message says which."""

    def __init__(self, component: str, problem: str, *, setting: str | None = None) -> None:
        where = f" (setting {setting})" if setting else ""
        super().__init__(f"{component}: {problem}{where}")
        self.component = component
        self.setting = setting


class UndecodableRecordError(PointsAdjusterError):
    """A record's bytes cannot be read as a known Avro record."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class PasError(PointsAdjusterError):
    """Base of the errors of the PAS client."""
