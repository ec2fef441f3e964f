"""The ``points-adjuster`` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
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


SCHEMAS_CHECK_DESCRIPTION = """\
For each schema <name>.avsc in the folder, compare the current version with the previous
released version (released/<name>.v<N>.avsc) by Avro's schema resolution rules:

  BACKWARD  the current schema reads what the released one wrote
  FORWARD   the released schema reads what the current one writes

Both ways: add or remove a field that has a default; string <-> bytes. BACKWARD only:
widen int -> long -> float -> double; rename a record or a field with an alias of the old
name; add an enum symbol (FORWARD too when the enum has a default symbol). Each
incompatibility is printed with the field's path and the reason.

When PA_SCHEMA_REGISTRY__URL is set, the current schema is also checked against the latest
version of its subject in the registry (subject named by PA_SCHEMA_REGISTRY__SUBJECT_STRATEGY
from the topic settings), under that subject's compatibility level. Nothing is registered.

Exit status: 0 all compatible, 1 an incompatibility or a registry error, 2 unreadable schemas.
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

    schemas = commands.add_parser(
        "schemas",
        help="check the Avro schemas' compatibility",
        description="Tools for the Avro schemas the service reads and writes.",
    )
    schema_commands = schemas.add_subparsers(
        dest="schemas_command", metavar="ACTION", required=True
    )
    schemas_check = schema_commands.add_parser(
        "check",
        help="is each schema compatible with its released versions and the registry?",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=SCHEMAS_CHECK_DESCRIPTION,
    )
    schemas_check.add_argument(
        "--dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder of <name>.avsc files with released/<name>.v<N>.avsc beside them "
        "(default: the schemas this installation ships)",
    )
    schemas_check.add_argument(
        "--transitive",
        action="store_true",
        help="compare with every earlier released version, not only the previous one",
    )
    schemas_check.add_argument(
        "--no-registry",
        action="store_true",
        help="do not ask the registry even when PA_SCHEMA_REGISTRY__URL is set",
    )
    schemas_check.add_argument("--json", action="store_true", help="print one JSON document")

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
        from service.eventloop import collect_less, run

        collect_less()
        run(run_service(settings), settings.event_loop)
        return EXIT_OK
    if args.command == "check":
        from service.tools.check import run_checks

        return asyncio.run(run_checks(settings))
    if args.command == "topics":
        from service.tools.topics import create_service_topics

        asyncio.run(create_service_topics(settings.kafka, args.partitions, out=sys.stdout))
        return EXIT_OK
    handler = _TOOLS.get(args.command)
    if handler is None:
        raise AssertionError(args.command)
    return handler(args, settings)


def _dlq(args: argparse.Namespace, settings: object) -> int:
    from service.settings import Settings
    from service.tools.dlq import run_dlq

    assert isinstance(settings, Settings)
    return run_dlq(args, settings)


def _schemas_check(args: argparse.Namespace, settings: object) -> int:
    from service.settings import Settings
    from service.tools.avro_compat import SchemaShapeError
    from service.tools.schemas import run_schemas_check

    assert isinstance(settings, Settings)
    try:
        return asyncio.run(
            run_schemas_check(
                settings,
                directory=args.dir,
                transitive=args.transitive,
                use_registry=not args.no_registry,
                as_json_output=args.json,
                out=sys.stdout,
            )
        )
    except SchemaShapeError as exc:
        return _fail(str(exc))


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


_TOOLS: dict[str, Callable[[argparse.Namespace, object], int]] = {
    "send": _send,
    "schemas": _schemas_check,
    "dlq": _dlq,
}
"""The commands that only read their arguments and the settings (``send``, ``schemas``,
``dlq``)."""
