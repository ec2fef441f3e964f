"""The ``points-adjuster`` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from service import __version__
from service.errors import ConfigError, PointsAdjusterError, StartupError
from service.logs import configure_logging
from service.settings import load_settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

DESCRIPTION = """\
Applies points-adjustment commands from Kafka exactly once through Mastercard's Points
Activity Service (PAS), and publishes a completed or failed event for every command.

Settings come from PA_* environment variables (every one in docs/settings.md), e.g.
PA_KAFKA__BOOTSTRAP_SERVERS=broker:9092 PA_PAS__BASE_URL=https://api.mastercard.com/loyalty

The PAS sandbox, development keys, a local broker and the demo are in the dev kit:
points-adjuster-devkit --help
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="points-adjuster",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        help="consume commands and apply them (the service)",
        description="Run the service until SIGTERM or SIGINT, then drain in-flight commands, "
        "commit offsets and exit. Exit code 2 on a bad setting or an unreachable dependency.",
    )
    run.add_argument(
        "--workers",
        type=_positive,
        default=None,
        metavar="N",
        help="consumer processes in the group, sharing the idempotency store, under one"
        " parent serving one endpoint (default: PA_WORKERS, else 1)",
    )
    commands.add_parser(
        "check",
        help="validate the settings and probe Kafka, PAS and the idempotency store",
        description="Validate every setting, then probe each dependency; prints one line per "
        "check and exits non-zero when any fails.",
    )

    send = commands.add_parser(
        "send",
        help="publish commands to the command topic",
        description="Publish commands read from a JSON-lines file (fields as in the "
        "PointsAdjustmentRequested schema), or N generated ones.",
    )
    source = send.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, help="JSON-lines file of commands")
    source.add_argument("--count", type=int, help="generate this many commands")
    send.add_argument(
        "--duplicates", type=float, default=0.0, help="share of repeats (0..1, default 0)"
    )
    send.add_argument(
        "--invalid", type=float, default=0.0, help="share of invalid commands (0..1, default 0)"
    )
    send.add_argument(
        "--accounts", type=int, default=100, help="distinct accounts (default %(default)s)"
    )
    send.add_argument("--seed", type=int, default=None, help="random seed for repeatable runs")

    from service.tools.topics import DEFAULT_PARTITIONS, partitions_argument

    topics = commands.add_parser(
        "topics",
        help="create the topics the service uses if missing",
        description="Create the topics the service reads and writes that do not exist yet:"
        " command (PA_KAFKA__COMMAND_TOPIC), completed, failed, dead-letter"
        " (PA_KAFKA__DEAD_LETTER_TOPIC) and review (PA_KAFKA__REVIEW_TOPIC). Needed where the"
        " brokers do not create topics on first use (auto.create.topics.enable=false).",
    )
    topics.add_argument(
        "--partitions",
        type=partitions_argument,
        default=DEFAULT_PARTITIONS,
        help="partitions of each topic created (default %(default)s)",
    )

    from service.tools.dlq import add_dlq_arguments

    add_dlq_arguments(commands)

    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 64 (got {text!r})")
    return value


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"points-adjuster: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        return _fail(f"invalid setting {exc}")
    except StartupError as exc:
        return _fail(str(exc))
    except PointsAdjusterError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    workers = getattr(args, "workers", None)
    settings = load_settings(**({"workers": workers} if workers is not None else {}))
    configure_logging(settings.log.level, settings.log.format)
    if args.command == "run" and settings.workers > 1:
        from service.workers.supervisor import supervise

        return asyncio.run(supervise(settings))
    if args.command == "run":
        from service.app import run_service
        from service.eventloop import run

        run(run_service(settings), settings.event_loop)
        return EXIT_OK
    if args.command == "check":
        from service.tools.check import run_checks

        return asyncio.run(run_checks(settings))
    if args.command == "topics":
        from service.tools.topics import create_service_topics

        asyncio.run(create_service_topics(settings.kafka, args.partitions, out=sys.stdout))
        return EXIT_OK
    if args.command == "send":
        return _send(args, settings)
    if args.command == "dlq":
        from service.tools.dlq import run_dlq

        return run_dlq(args, settings)
    raise AssertionError(args.command)


def _send(args: argparse.Namespace, settings: object) -> int:
    from service.codec.avro import AvroCodec
    from service.settings import Settings
    from service.tools.generate import generate_commands
    from service.tools.send import read_jsonl, send_commands

    assert isinstance(settings, Settings)
    if args.file is not None:
        commands = list(read_jsonl(args.file))
    else:
        for name in ("duplicates", "invalid"):
            if not 0 <= getattr(args, name) <= 1:
                return _fail(f"--{name} must be between 0 and 1")
        commands = generate_commands(
            args.count,
            duplicate_share=args.duplicates,
            invalid_share=args.invalid,
            accounts=args.accounts,
            seed=args.seed,
        ).commands
    sent = asyncio.run(send_commands(settings.kafka, commands, codec=AvroCodec.from_directory()))
    print(f"sent {sent} commands to {settings.kafka.command_topic}")
    return EXIT_OK
