"""What ``dlq`` prints: times, the lines of ``list``, one dead letter for ``show`` (account
and other digit runs masked, see :mod:`~service.tools.dlq.masking`) and the summary of
``replay``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from service.domain.command import mask_account
from service.kafka.deadletter import (
    ATTEMPTS,
    FAILURE_FIRST,
    FAILURE_LAST,
    ORIGINAL_OFFSET,
    ORIGINAL_PARTITION,
    ORIGINAL_TIMESTAMP,
    REPLAY_COUNT,
)
from service.tools.dlq.masking import (
    MASKED_NOTE,
    hex_preview,
    mask_digit_runs,
    mask_text,
    one_line,
)
from service.tools.dlq.selection import DeadLetter, Tally

HEX_PREVIEW_BYTES = 64

RAW_WARNING = (
    "warning: --raw prints unmasked record bytes, which may hold account or card numbers;"
    " for those entitled to see them"
)

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


LIST_HEADER = (
    f"{'partition/offset':<17} {'failed at (UTC)':<25} {'reason':<26} {'attempts':>8}"
    f" {'replays':>7}  account"
)


def list_line(letter: DeadLetter) -> str:
    """One line of ``dlq list``; nothing of the record's value but the masked account."""
    attempts = "?" if letter.meta.attempts is None else str(letter.meta.attempts)
    return (
        f"{f'{letter.partition}/{letter.offset}':<17} {iso_ms(letter.failed_at_ms):<25}"
        f" {mask_text(letter.reason):<26} {attempts:>8} {letter.meta.replay_count:>7}"
        f"  {letter.masked_account}"
    )


def _printable(value: bytes, *, raw: bool = False) -> str:
    """Header or key bytes for display: text when it is readable, else hex; digit runs
    masked unless ``raw``."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    else:
        if text.isprintable():
            return one_line(text) if raw else mask_text(text)
    shown, masked = hex_preview(value, HEX_PREVIEW_BYTES, raw=raw)
    more = f" ... ({len(value)} bytes)" if len(value) > HEX_PREVIEW_BYTES else ""
    note = f" ({MASKED_NOTE})" if masked else ""
    return f"0x {shown}{more}{note}"


_TIME_HEADERS = {ORIGINAL_TIMESTAMP, FAILURE_FIRST, FAILURE_LAST}
# Integers the dead-letter writer puts in pa.* headers: shown as they are, never masked
# (an offset or a time in epoch milliseconds is a long digit run, not an account number).
_INTEGER_HEADERS = {
    *_TIME_HEADERS,
    ORIGINAL_PARTITION,
    ORIGINAL_OFFSET,
    ATTEMPTS,
    REPLAY_COUNT,
}


def masked_command(command: Mapping[str, Any]) -> dict[str, Any]:
    """The command with its account number masked wherever it appears, and any other digit
    run that could be an account or card number masked too."""
    account = command.get("bank_account_number")
    masked_number = mask_account(account) if isinstance(account, str) and account else None

    def mask(value: Any) -> Any:
        if isinstance(value, str):
            if masked_number is not None and isinstance(account, str):
                value = value.replace(account, masked_number)
            return mask_digit_runs(value)
        if isinstance(value, Mapping):
            return {name: mask(item) for name, item in value.items()}
        return value

    return {name: mask(value) for name, value in command.items()}


def _json_value(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _header_value(name: str, value: bytes, *, raw: bool) -> str:
    if name in _INTEGER_HEADERS and value.isascii() and value.decode("ascii").isdigit():
        number = value.decode("ascii")
        return f"{number} ({iso_ms(int(number))})" if name in _TIME_HEADERS else number
    return _printable(value, raw=raw)


def describe(letter: DeadLetter, topic: str, *, raw: bool = False) -> list[str]:
    """The lines of ``dlq show``: headers, key, and the command or a hex preview of the
    value; digit runs that could be account or card numbers masked everywhere unless
    ``raw`` (the integers of the ``pa.*`` headers excepted)."""
    lines = [f"dead letter {topic} partition {letter.partition} offset {letter.offset}"]
    lines.append(f"  written at: {iso_ms(letter.timestamp_ms)}")
    lines.append("headers:")
    if not letter.headers:
        lines.append("  (none)")
    for name, value in letter.headers:
        shown_name = one_line(name) if raw else mask_text(name)
        lines.append(f"  {shown_name}: {_header_value(name, value, raw=raw)}")
    key = "(none)" if letter.key is None else _printable(letter.key, raw=raw)
    lines.append(f"key: {key}")
    if letter.command is not None:
        if raw:
            lines.append("command (PointsAdjustmentRequested, unmasked: --raw):")
            shown: Mapping[str, Any] = letter.command
        else:
            lines.append("command (PointsAdjustmentRequested, account masked):")
            shown = masked_command(letter.command)
        text = json.dumps(shown, indent=2, default=_json_value)
        lines.extend(f"  {line}" for line in text.splitlines())
    else:
        size = 0 if letter.value is None else len(letter.value)
        lines.append(f"value: undecodable ({letter.undecodable}), {size} bytes")
        if letter.value:
            preview, masked = hex_preview(letter.value, HEX_PREVIEW_BYTES, raw=raw)
            lines.append(f"  first bytes: {preview}")
            if masked:
                lines.append(f"  ({MASKED_NOTE}: ** for their bytes; --raw shows them)")
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
        ("refused: value or key not kept", tally.cut),
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
