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

Settings come from PA_* environment variables (see README.md, "Settings"), e.g.
PA_KAFKA__BOOTSTRAP_SERVERS=broker:9092 PA_PAS__BASE_URL=https://api.mastercard.com/loyalty
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="points-adjuster",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    commands.add_parser(
        "run",
        help="consume commands and apply them (the service)",
        description="Run the service until SIGTERM or SIGINT, then drain in-flight commands, "
        "commit offsets and exit. Exit code 2 on a bad setting or an unreachable dependency.",
    )
    commands.add_parser(
        "check",
        help="validate the settings and probe Kafka, PAS and the idempotency store",
        description="Validate every setting, then probe each dependency; prints one line per "
        "check and exits non-zero when any fails.",
    )

    sandbox = commands.add_parser(
        "sandbox",
        help="serve the local PAS sandbox over HTTP",
        description="A stand-in for PAS that follows the contract in pas-api.md, with an "
        "in-memory ledger and admin endpoints under /_sandbox/ for tests.",
    )
    sandbox.add_argument("--host", default="127.0.0.1", help="listen address (default %(default)s)")
    sandbox.add_argument("--port", type=int, default=8081, help="listen port (default %(default)s)")
    sandbox.add_argument(
        "--latency-ms", type=float, default=0.0, help="fixed delay per adjustment (default 0)"
    )
    sandbox.add_argument(
        "--unknown-account",
        action="append",
        default=[],
        metavar="NUMBER",
        help="answer 404 ACCOUNT_NOT_FOUND for this account (repeatable)",
    )
    sandbox.add_argument("--path-prefix", default="", help='e.g. "/loyalty" (default none)')

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

    topics = commands.add_parser(
        "topics",
        help="create the command and outcome topics if missing",
        description="Create the command, completed and failed topics that do not exist yet.",
    )
    topics.add_argument(
        "--partitions", type=int, default=3, help="partitions of each topic (default 3)"
    )

    demo = commands.add_parser(
        "demo",
        help="run the whole thing locally and print a summary",
        description="Start a local Kafka broker and the PAS sandbox, run the service, send "
        "commands including duplicates, invalid and undecodable ones, wait for every "
        "outcome, print a summary, and stop everything it started.",
    )
    demo.add_argument("--count", type=int, default=300, help="commands (default %(default)s)")
    demo.add_argument(
        "--latency-ms", type=float, default=20.0, help="sandbox latency (default %(default)s)"
    )
    demo.add_argument(
        "--bootstrap-servers",
        default=None,
        help="use this broker instead of starting a local one",
    )
    return parser


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
    if args.command == "sandbox":
        return _sandbox(args)
    if args.command == "demo":
        from service.tools.demo import run_demo

        configure_logging("WARNING", "console")
        return asyncio.run(
            run_demo(
                count=args.count,
                latency_ms=args.latency_ms,
                bootstrap_servers=args.bootstrap_servers,
            )
        )
    settings = load_settings()
    configure_logging(settings.log.level, settings.log.format)
    if args.command == "run":
        from service.app import run_service

        asyncio.run(run_service(settings))
        return EXIT_OK
    if args.command == "check":
        from service.tools.check import run_checks

        return asyncio.run(run_checks(settings))
    if args.command == "topics":
        from service.kafka.clients import ensure_topics

        k = settings.kafka
        names = [k.command_topic, k.completed_topic, k.failed_topic]
        created = asyncio.run(ensure_topics(k, dict.fromkeys(names, args.partitions)))
        for name in names:
            print(f"{name}: {'created' if name in created else 'exists'}")
        return EXIT_OK
    if args.command == "send":
        return _send(args, settings)
    raise AssertionError(args.command)


def _sandbox(args: argparse.Namespace) -> int:
    from service.sandbox.app import serve_forever
    from service.sandbox.config import SandboxConfig

    configure_logging("INFO", "console")
    config = SandboxConfig(
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        unknown_accounts=frozenset(args.unknown_account),
        path_prefix=args.path_prefix,
    )
    asyncio.run(serve_forever(config))
    return EXIT_OK


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
