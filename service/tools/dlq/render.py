"""What ``dlq`` prints: times, the lines of ``list``, one dead letter for ``show`` (account
masked) and the summary of ``replay``."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from service.domain.command import mask_account
from service.kafka.deadletter import PREFIX, sanitize
from service.tools.dlq.selection import DeadLetter, Tally

HEX_PREVIEW_BYTES = 64

NO_OP_NOTE = (
    "replaying them is a no-op: their stored outcome is published again, marked duplicate,"
    " and PAS is not called"
)


def iso_ms(epoch_ms: int) -> str:
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> int:
    """Epoch milliseconds of an ISO-8601 time (``Z`` or an offset; none means UTC)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"not an ISO-8601 time: {text!r} (e.g. 2025-01-31T14:00:00Z)"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def reason_counts(letters: Iterable[DeadLetter]) -> Counter[str]:
    return Counter(letter.reason for letter in letters)


LIST_HEADER = (
    f"{'partition/offset':<17} {'failed at (UTC)':<25} {'reason':<26} {'attempts':>8}"
    f" {'replays':>7}  account"
)


def list_line(letter: DeadLetter) -> str:
    attempts = "?" if letter.meta.attempts is None else str(letter.meta.attempts)
    return (
        f"{f'{letter.partition}/{letter.offset}':<17} {iso_ms(letter.failed_at_ms):<25}"
        f" {letter.reason:<26} {attempts:>8} {letter.meta.replay_count:>7}"
        f"  {letter.masked_account}"
    )


def _printable(value: bytes) -> str:
    """Header or key bytes for display: text when it is readable, else hex."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    else:
        if text.isprintable():
            return text
    shown = value[:HEX_PREVIEW_BYTES].hex(" ")
    more = f" ... ({len(value)} bytes)" if len(value) > HEX_PREVIEW_BYTES else ""
    return f"0x {shown}{more}"


_TIME_HEADERS = {"pa.original.timestamp", "pa.failure.first", "pa.failure.last"}


def masked_command(command: Mapping[str, Any]) -> dict[str, Any]:
    """The command with its account number masked wherever it appears."""
    account = command.get("bank_account_number")
    masked_number = mask_account(account) if isinstance(account, str) and account else None

    def mask(value: Any) -> Any:
        if isinstance(value, str) and masked_number is not None and isinstance(account, str):
            return value.replace(account, masked_number)
        if isinstance(value, Mapping):
            return {name: mask(item) for name, item in value.items()}
        return value

    return {name: mask(value) for name, value in command.items()}


def _json_value(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def describe(letter: DeadLetter, topic: str) -> list[str]:
    """The lines of ``dlq show``: headers, key, and the masked command or a hex preview."""
    lines = [f"dead letter {topic} partition {letter.partition} offset {letter.offset}"]
    lines.append(f"  written at: {iso_ms(letter.timestamp_ms)}")
    lines.append("headers:")
    if not letter.headers:
        lines.append("  (none)")
    for name, value in letter.headers:
        shown = _printable(value)
        if not name.startswith(PREFIX):
            shown = sanitize(shown)
        elif name in _TIME_HEADERS and shown.isdigit():
            shown = f"{shown} ({iso_ms(int(shown))})"
        lines.append(f"  {sanitize(name)}: {shown}")
    key = "(none)" if letter.key is None else sanitize(_printable(letter.key))
    lines.append(f"key: {key}")
    if letter.command is not None:
        lines.append("command (PointsAdjustmentRequested, account masked):")
        text = json.dumps(masked_command(letter.command), indent=2, default=_json_value)
        lines.extend(f"  {line}" for line in text.splitlines())
    else:
        size = 0 if letter.value is None else len(letter.value)
        lines.append(f"value: undecodable ({letter.undecodable}), {size} bytes")
        if letter.value:
            lines.append(f"  first bytes: {letter.value[:HEX_PREVIEW_BYTES].hex(' ')}")
    return lines


def summary_lines(
    tally: Tally,
    *,
    dry_run: bool,
    store_note: str | None,
    remaining: int,
    limit: int | None,
) -> list[str]:
    """The summary printed at the end of ``dlq replay``."""
    verb = "would be replayed" if dry_run else "replayed"
    rows = [
        ("examined", tally.examined),
        ("matched the filters", tally.matched),
        (verb, tally.replayed),
        ("refused: replay limit", tally.refused),
        ("skipped by filters", tally.skipped),
    ]
    lines = [f"{label:<38}{count:>8}" for label, count in rows]
    for reason, count in sorted(tally.by_reason.items()):
        label = f"  {verb} with {reason}"
        lines.append(f"{label:<38}{count:>8}")
    if store_note is None:
        lines.append(f"{'already terminal in the idempotency store':<38}{tally.terminal:>8}")
        if tally.terminal:
            lines.append(f"  ({NO_OP_NOTE})")
    else:
        lines.append(f"already terminal in the idempotency store: not checked ({store_note})")
    if limit is not None and tally.replayed >= limit and remaining:
        lines.append(f"stopped at --limit {limit}; {remaining} records left for the next run")
    if dry_run:
        lines.append("dry run: nothing was published and no offset was committed")
    return lines
