"""The exception tree of points-adjuster: every exception the service defines.

PointsAdjusterError            base; ``retriable`` says whether trying again may help
├── ConfigError                a setting is wrong; names the setting
├── StartupError               a dependency is unreachable or unusable at start-up
├── UndecodableRecordError     a Kafka record is not a readable command (``reason`` code)
├── SecurityError              ``service.security.errors``: keys, certificates, JWE; never
│   │                          retriable; a ``reason`` code and a ``detail``
│   ├── KeyLoadError           a key or certificate file cannot be loaded (``path``)
│   ├── CertificateError       a certificate is unusable: expired, not yet valid, wrong key
│   └── DecryptionError        a JWE cannot be decrypted or fails its integrity check
├── StoreError                 ``service.domain.store``: the idempotency store cannot do
│   │                          its work (retriable)
│   ├── StoreUnavailableError  an I/O failure: disk full, locked too long; retriable
│   └── StoreLostError         the store was deleted or replaced in use; not retriable
├── DeadlineError              ``service.pas.bounded``: an exchange with PAS did not end in
│                              time; caught by the PAS adapters, which report it as a value
├── MalformedHistoryError      ``service.pas.history``: PAS's history answer is not its
│                              shape; caught by the history adapter
├── RegistryError              ``service.registry.errors``: the schema registry refused a
│   │                          request (``status``, its ``code``)
│   ├── SchemaNotFound         no such schema id, subject or version (404)
│   └── RegistryUnavailable    unreachable, timing out, 5xx or 429 after the retries;
│                              retriable
├── DeadLetterToolError        ``service.tools.dlq.kafka``: ``dlq`` cannot do what was asked
├── InputError                 ``service.tools.send``: a line of a commands file is unusable
└── SchemaShapeError           ``service.tools.avro_compat``: ``schemas check`` met a file
                               that is not an Avro schema it understands

Outside the tree, on purpose:

OwnershipLostError (RuntimeError)   ``service.domain.store``: the record is no longer held
                                    by the caller (its lease was taken over). Not a failure of
                                    anything, so no handler of ``PointsAdjusterError`` takes
                                    it for one; the runner catches it by name.
_GroupNotReadyError (Exception)     ``service.kafka.groups``, private: the broker refused an
                                    offsets request; ``committed_offsets`` tries again and
                                    never lets it out.

The dev kit adds its own (``pa_devkit``: the sandbox's and the local broker's errors, and
``SignatureError``, a ``SecurityError`` of the OAuth 1.0a verifier); the product never
raises them.

What PAS or the network does to a call is never an exception: ``PasPort.adjust`` answers
with a ``PasReply`` and ``HistoryPort.lookup`` with a ``HistoryFailed``.
``tests/unit/test_errors.py`` holds this drawing to the code.
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
