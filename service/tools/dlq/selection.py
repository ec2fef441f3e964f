"""The dead letters and how they are selected: :class:`DeadLetter` read from a consumed
record, the filters of a :class:`Selection`, and the replay decision (replay, skip or
refuse) with its :class:`Tally`. Plain functions, testable without a broker."""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.codec.avro import COMMAND, AvroCodec
from service.domain.command import mask_account
from service.errors import UndecodableRecordError
from service.kafka.deadletter import DeadLetterMeta, header_pairs, parse_headers

NO_REASON = "(no reason)"


@dataclass(frozen=True)
class DeadLetter:
    """One record of the dead-letter topic, its metadata read, its value decoded if it can be."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    meta: DeadLetterMeta
    command: Mapping[str, Any] | None = None
    undecodable: str | None = None
    """Why ``value`` is not a command (a reason code), when it is not."""

    @property
    def reason(self) -> str:
        return self.meta.reason or NO_REASON

    @property
    def failed_at_ms(self) -> int:
        """The last failure's time, else when the dead letter was written."""
        last = self.meta.last_failure_ms
        return self.timestamp_ms if last is None else last

    @property
    def account(self) -> str | None:
        """The command's bank account number: for matching only, never for printing."""
        number = self.command.get("bank_account_number") if self.command else None
        return number if isinstance(number, str) else None

    @property
    def idempotency_key(self) -> str | None:
        key = self.command.get("idempotency_key") if self.command else None
        return key if isinstance(key, str) else None

    @property
    def masked_account(self) -> str:
        if self.command is None:
            return "undecodable"
        return mask_account(self.account) if self.account else "(no account)"


def read_dead_letter(
    codec: AvroCodec,
    *,
    partition: int,
    offset: int,
    timestamp_ms: int,
    key: bytes | None,
    value: bytes | None,
    headers: object,
) -> DeadLetter:
    """A :class:`DeadLetter` from a consumed record's parts; never raises on bad bytes."""
    meta = parse_headers(headers)
    command: Mapping[str, Any] | None = None
    undecodable: str | None = None
    try:
        name, record = codec.decode(value)
    except UndecodableRecordError as exc:
        undecodable = exc.reason
    else:
        if name == COMMAND:
            command = record
        else:
            undecodable = "UNEXPECTED_SCHEMA"
    raw_headers = tuple(header_pairs(headers))
    return DeadLetter(
        partition, offset, timestamp_ms, key, value, raw_headers, meta, command, undecodable
    )


@dataclass(frozen=True)
class Selection:
    """Which dead letters a command applies to; every given criterion must hold."""

    reasons: frozenset[str] = frozenset()
    since_ms: int | None = None
    """Failed at or after (``pa.failure.last``, else the dead letter's own timestamp)."""
    until_ms: int | None = None
    """Failed before."""
    partition: int | None = None
    from_offset: int | None = None
    """Dead-letter topic offsets, both ends included."""
    to_offset: int | None = None
    account: str | None = None
    """The decoded command's bank account number (undecodable records never match)."""

    def matches(self, letter: DeadLetter) -> bool:
        return (
            (not self.reasons or letter.reason in self.reasons)
            and (self.since_ms is None or letter.failed_at_ms >= self.since_ms)
            and (self.until_ms is None or letter.failed_at_ms < self.until_ms)
            and (self.partition is None or letter.partition == self.partition)
            and (self.from_offset is None or letter.offset >= self.from_offset)
            and (self.to_offset is None or letter.offset <= self.to_offset)
            and (self.account is None or letter.account == self.account)
        )


class Verdict(enum.StrEnum):
    REPLAY = "replay"
    SKIPPED = "skipped"  # the selection does not match
    REFUSED = "refused"  # the replay limit is reached (loop guard)
    CUT = "cut"  # the dead letter was cut down: its value or key is not kept


@dataclass
class Tally:
    """What a replay run did (or, dry, would do)."""

    examined: int = 0
    replayed: int = 0
    skipped: int = 0
    refused: int = 0
    cut: int = 0
    """Dead letters whose value or key was cut down to fit: nothing to replay."""
    terminal: int = 0
    """Replayed commands already terminal in the idempotency store."""
    by_reason: Counter[str] = field(default_factory=Counter)

    @property
    def matched(self) -> int:
        return self.replayed + self.refused + self.cut


class ReplayPlanner:
    """Decides record by record: replay, skip (filters) or refuse (loop guard); stops at
    ``limit`` replays."""

    def __init__(self, selection: Selection, max_replays: int, limit: int | None = None):
        self.selection = selection
        self.max_replays = max_replays
        self.limit = limit
        self.tally = Tally()

    @property
    def done(self) -> bool:
        return self.limit is not None and self.tally.replayed >= self.limit

    def decide(self, letter: DeadLetter) -> Verdict:
        self.tally.examined += 1
        if not self.selection.matches(letter):
            self.tally.skipped += 1
            return Verdict.SKIPPED
        if letter.meta.value_cut or letter.meta.key_cut:
            self.tally.cut += 1
            return Verdict.CUT
        if letter.meta.replay_count >= self.max_replays:
            self.tally.refused += 1
            return Verdict.REFUSED
        self.tally.replayed += 1
        self.tally.by_reason[letter.reason] += 1
        return Verdict.REPLAY
