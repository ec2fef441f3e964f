"""Writer schemas a record names that the shipped schemas do not have: from the registry.

Two cases, both resolved ahead of decoding (``fetch``, async), so that decoding itself stays
synchronous and reads only what is cached here:

- A Confluent-framed record names its writer schema by the registry's id: the schema is
  fetched by id once and kept (ids are immutable). An id the registry does not have (404) is
  remembered as such: its records are dead-lettered, saying so.
- A single-object record whose fingerprint no shipped schema has (a version released after
  this build, or a library's non-standard form of it): the Confluent API has no lookup by
  fingerprint, so every version registered under the command subject is read and indexed
  under all of its fingerprints (standard and non-standard). A fingerprint still unknown
  after that is dead-lettered; the subject is read again for a new unknown fingerprint at
  most once per ``rescan_interval_s``.

A registry that cannot be reached raises from ``fetch`` (``RegistryUnavailable``, or
``RegistryError`` for a refusal such as a wrong password): the caller holds the record back
and tries later. Nothing is ever dead-lettered because the registry was down.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from service.codec.avro import AvroCodec, SchemaEntry, parse_entry
from service.codec.framing import Frame
from service.registry.client import SchemaRegistryClient
from service.registry.errors import SchemaNotFound

log = structlog.get_logger("service.codec.writers")

MAX_REMEMBERED_MISSING = 1_000
"""Ids the registry said it does not have, remembered so their records are not fetched for
again and again (bounded: the oldest is forgotten first)."""


@dataclass(frozen=True, slots=True)
class Missing:
    """Why a record's writer schema cannot be had (a dead-letter reason in words)."""

    reason: str
    detail: str


class RegistryWriters:
    """Writer schemas from a registry, by Confluent id and by fingerprint; cache-only reads."""

    def __init__(
        self,
        codec: AvroCodec,
        registry: SchemaRegistryClient,
        subject: str,
        *,
        rescan_interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._codec = codec
        self._registry = registry
        self._subject = subject
        self._rescan_interval_s = rescan_interval_s
        self._clock = clock
        self._by_id: dict[int, SchemaEntry] = {}
        self._missing: dict[int, Missing] = {}
        self._scanned: dict[bytes, float] = {}
        """Unknown fingerprints, and when the subject was read for each."""
        self._last_scan: float | None = None
        self._registered_versions = 0

    @property
    def where(self) -> str:
        return self._registry.where

    @property
    def subject(self) -> str:
        return self._subject

    # -- cache-only lookups (decoding) ---------------------------------------------------

    def by_id(self, schema_id: int) -> SchemaEntry | Missing | None:
        """The writer schema of ``schema_id``, why there is none, or None: not fetched yet."""
        return self._by_id.get(schema_id) or self._missing.get(schema_id)

    def needs_scan(self, fingerprint: bytes) -> bool:
        """Whether the subject should be read for ``fingerprint`` (unknown, and not read for
        it within the rescan interval)."""
        if self._codec.writer(fingerprint) is not None:
            return False
        scanned = self._scanned.get(fingerprint)
        return scanned is None or self._clock() - scanned >= self._rescan_interval_s

    def scanned_versions(self) -> int:
        """How many versions the last read of the subject found."""
        return self._registered_versions

    # -- fetching (before decoding) ------------------------------------------------------

    async def fetch(self, frame: Frame) -> None:
        """Fetch what decoding ``frame`` needs, if anything; raise when the registry cannot
        answer (the record is to be tried again later)."""
        if frame.framing == "confluent":
            if self.by_id(frame.schema_id) is None:
                await self._fetch_id(frame.schema_id)
        elif self.needs_scan(frame.fingerprint):
            await self._scan(frame.fingerprint)

    async def _fetch_id(self, schema_id: int) -> None:
        try:
            text = await self._registry.schema_by_id(schema_id)
        except SchemaNotFound as exc:
            self._remember_missing(
                schema_id,
                Missing(
                    "UNKNOWN_SCHEMA_ID",
                    f"starts with 00: the Confluent wire format, schema id {schema_id}, which"
                    f" the registry at {self.where} does not have (HTTP 404"
                    + (f", error {exc.code}" if exc.code else "")
                    + ")",
                ),
            )
            return
        try:
            entry = parse_entry(json.loads(text))
        except ValueError as exc:
            self._remember_missing(
                schema_id,
                Missing(
                    "UNUSABLE_SCHEMA",
                    f"schema id {schema_id} of the registry at {self.where} is not an Avro"
                    f" record schema: {str(exc)[:200]}",
                ),
            )
            return
        self._by_id[schema_id] = entry
        log.info("registry.schema_fetched", schema_id=schema_id, schema=entry.name)

    async def _scan(self, fingerprint: bytes) -> None:
        now = self._clock()
        due = self._last_scan is None or now - self._last_scan >= self._rescan_interval_s
        if due:
            versions = await self._registry.versions(self._subject)
            for number in versions:
                found = await self._registry.version(self._subject, number)
                try:
                    entry = parse_entry(json.loads(found.schema))
                except ValueError:
                    log.warning("registry.unusable_version", subject=self._subject, version=number)
                    continue
                self._codec.add_writer(entry)
                self._by_id.setdefault(found.id, entry)
            self._registered_versions = len(versions)
            self._last_scan = now
            log.info("registry.subject_read", subject=self._subject, versions=len(versions))
        self._scanned[fingerprint] = now
        if len(self._scanned) > MAX_REMEMBERED_MISSING:
            self._scanned.pop(next(iter(self._scanned)))

    def _remember_missing(self, schema_id: int, missing: Missing) -> None:
        if len(self._missing) >= MAX_REMEMBERED_MISSING:
            self._missing.pop(next(iter(self._missing)))
        self._missing[schema_id] = missing
        log.warning("registry.schema_missing", schema_id=schema_id, reason=missing.reason)
