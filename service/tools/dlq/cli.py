"""The ``dlq list|show|replay`` command line: its arguments, and running the action they
ask for."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TextIO

from service.settings import Settings
from service.tools.dlq.kafka import (
    EXIT_OK,
    DeadLetterToolError,
    ReplayOptions,
    list_dead_letters,
    replay_dead_letters,
    show_dead_letter,
)
from service.tools.dlq.render import RAW_WARNING, parse_time
from service.tools.dlq.selection import Selection

DLQ_DESCRIPTION = """\
Inspect the dead-letter topic (PA_KAFKA__DEAD_LETTER_TOPIC) and replay records from it.

A dead letter is the original record, key and value unchanged, with pa.* headers saying
where it came from and why it failed (pa.error.reason, pa.attempts, pa.failure.last, ...).
Account numbers are never printed: commands show the last four digits only, and digit runs
that could be account or card numbers are masked in keys, headers and hex dumps (show --raw
prints them unmasked, for those entitled to see them).
"""

REPLAY_DESCRIPTION = """\
Re-publish the original key and value of the selected dead letters to the command topic
(PA_KAFKA__COMMAND_TOPIC), with headers pa.replay.id (one uuid per run) and pa.replay.count
(the record's previous count + 1); the original's other non-pa.* headers are kept.

Loop guard: a record already replayed PA_KAFKA__MAX_REPLAYS times is refused.
Resumable: the run reads with its own consumer group (default <PA_KAFKA__GROUP_ID>-dlq-replay)
and commits, once the replayed records are acknowledged, how far it has examined the topic,
skipped and refused records included; the next run with the same group continues there. To
replay, later, records a filtered run passed over, use another --group. Do not run two
replays with the same group at once. An interrupted run commits up to its last acknowledged
batch (at most about a second of work back); what it sent after that is replayed again by
the next run, which the idempotency store makes harmless.

A replayed command whose idempotency key is already terminal in the store is a no-op: its
stored outcome is published again, marked duplicate, and PAS is not called.
"""


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reason",
        action="append",
        default=[],
        metavar="R",
        help="only this pa.error.reason, e.g. PAS_UNAVAILABLE or CORRUPT_AVRO (repeatable)",
    )
    parser.add_argument(
        "--since",
        type=parse_time,
        metavar="ISO",
        help="only records that last failed at or after this time (ISO-8601; UTC if no offset)",
    )
    parser.add_argument(
        "--until", type=parse_time, metavar="ISO", help="only records that last failed before"
    )
    parser.add_argument(
        "--partition", type=_non_negative_int, metavar="P", help="only this dead-letter partition"
    )
    parser.add_argument(
        "--from-offset",
        type=_non_negative_int,
        metavar="N",
        help="only dead-letter offsets >= N (as printed by list)",
    )
    parser.add_argument(
        "--to-offset", type=_non_negative_int, metavar="N", help="only dead-letter offsets <= N"
    )
    parser.add_argument(
        "--account",
        metavar="NUMBER",
        help="only commands for this bank account number (matched, never printed); '-' reads"
        " it from stdin, keeping it out of shell history and the process list",
    )


def add_dlq_arguments(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``dlq list|show|replay`` on the CLI's sub-command parsers."""
    dlq = subparsers.add_parser(
        "dlq",
        help="inspect and replay the dead-letter topic (dlq list|show|replay)",
        description=DLQ_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)

    listing = actions.add_parser(
        "list",
        help="count dead letters by reason and list them",
        description="Read the dead-letter topic from its beginning to its current end (no"
        " consumer group, nothing committed); print the matching records' counts by reason,"
        " then one line per record: partition/offset, failure time, reason, attempts,"
        " replay count and the masked account ('undecodable' when the value is not a command).",
    )
    _add_selection(listing)
    listing.add_argument(
        "--limit", type=_positive_int, metavar="N", help="print at most N record lines"
    )
    listing.add_argument(
        "--review", action="store_true", help="read the review topic (PA_KAFKA__REVIEW_TOPIC)"
    )

    show = actions.add_parser(
        "show",
        help="print one dead letter with every header",
        description="Print every header of one dead letter, its key, and the command with"
        " bank_account_number masked, or the first 64 bytes in hex when it is not a command."
        " Digit runs that could be account or card numbers are masked everywhere: in text"
        " like account numbers (last four shown), in hex as ** for each of their bytes.",
    )
    show.add_argument("--partition", type=_non_negative_int, required=True, metavar="P")
    show.add_argument("--offset", type=_non_negative_int, required=True, metavar="O")
    show.add_argument(
        "--review", action="store_true", help="read the review topic (PA_KAFKA__REVIEW_TOPIC)"
    )
    show.add_argument(
        "--raw",
        action="store_true",
        help="print the key, headers and value unmasked (a warning goes to stderr first): they"
        " may hold account or card numbers; for those entitled to see them",
    )

    replay = actions.add_parser(
        "replay",
        help="re-publish dead letters to the command topic",
        description=REPLAY_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_selection(replay)
    replay.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be replayed; publish nothing, commit nothing",
    )
    replay.add_argument("--limit", type=_positive_int, metavar="N", help="stop after N replays")
    replay.add_argument(
        "--rate", type=_positive_float, metavar="PER_S", help="replay at most PER_S records/s"
    )
    replay.add_argument(
        "--group", metavar="G", help="consumer group of the replay (default <group_id>-dlq-replay)"
    )
    replay.add_argument(
        "--progress",
        action="store_true",
        help="progress bar on stderr even when it is not a terminal",
    )


def selection_from_arguments(args: argparse.Namespace, stdin: TextIO | None = None) -> Selection:
    account = args.account
    if account == "-":
        account = (stdin or sys.stdin).readline().strip()
        if not account:
            raise DeadLetterToolError("--account -: no account number on stdin")
    return Selection(
        reasons=frozenset(reason.strip().upper() for reason in args.reason),
        since_ms=args.since,
        until_ms=args.until,
        partition=args.partition,
        from_offset=args.from_offset,
        to_offset=args.to_offset,
        account=account,
    )


async def execute(
    args: argparse.Namespace,
    settings: Settings,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run the ``dlq`` action ``args`` asks for; the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    kafka = settings.kafka
    if args.dlq_command == "show":
        topic = kafka.review_topic if args.review else None
        if args.raw:
            print(RAW_WARNING, file=err, flush=True)
        return await show_dead_letter(
            kafka, args.partition, args.offset, topic=topic, out=out, raw=args.raw
        )
    selection = selection_from_arguments(args)
    if args.dlq_command == "list":
        topic = kafka.review_topic if args.review else None
        return await list_dead_letters(kafka, selection, limit=args.limit, topic=topic, out=out)
    if args.dlq_command == "replay":
        options = ReplayOptions(
            selection=selection,
            dry_run=args.dry_run,
            limit=args.limit,
            rate_per_s=args.rate,
            group=args.group,
            progress=args.progress,
        )
        await replay_dead_letters(settings, options, out=out, err=err)
        return EXIT_OK
    raise AssertionError(args.dlq_command)


def run_dlq(args: argparse.Namespace, settings: Settings) -> int:
    """Entry point of ``points-adjuster dlq``."""
    return asyncio.run(execute(args, settings))
