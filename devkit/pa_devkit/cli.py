"""The ``points-adjuster-devkit`` command line: the PAS sandbox, development keys, the demo.

None of this runs in production; the product's command line is ``points-adjuster``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from pa_devkit.sandbox.cli_args import add_sandbox_arguments, config_from_arguments
from service import __version__
from service.errors import PointsAdjusterError
from service.logs import configure_logging

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

DESCRIPTION = """\
The development kit of points-adjuster: a PAS sandbox that verifies OAuth1 and JWE like
Mastercard's gateway, throw-away key sets, and a local demo of the whole pipeline. A local
Kafka broker: python -m pa_devkit.localinfra.kafka --help (or deploy/local/kafka.sh).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="points-adjuster-devkit",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sandbox = commands.add_parser(
        "sandbox",
        help="serve the local PAS sandbox over HTTP",
        description="A stand-in for PAS that follows the contract in docs/pas.md: OAuth1 "
        "verification and JWE with --keys-dir, an in-memory ledger, fault injection, and "
        "admin endpoints under /_sandbox/ for tests.",
    )
    add_sandbox_arguments(sandbox)

    keys = commands.add_parser(
        "keys",
        help="development key material (keys generate)",
        description="Manage development keys. Real keys come from Mastercard Developers.",
    )
    key_commands = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    generate = key_commands.add_parser(
        "generate",
        help="write a complete development key set",
        description="Write a development key set (RSA-2048, self-signed): the client signing "
        "key as PKCS#12 with its certificate, the client decryption key and certificate, and "
        "the PAS encryption certificate with its private key (for the sandbox). The default "
        "PA_PAS__* paths point into ./keys. Never use these keys outside development.",
    )
    generate.add_argument(
        "--dir", type=Path, default=Path("keys"), help="target folder (default %(default)s)"
    )
    generate.add_argument(
        "--days", type=int, default=365, help="certificate validity (default %(default)s)"
    )
    generate.add_argument(
        "--p12-password",
        default=None,
        help="password of the PKCS#12 signing key (default: the documented dev password)",
    )
    generate.add_argument("--force", action="store_true", help="overwrite existing files")

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
    print(f"points-adjuster-devkit: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except PointsAdjusterError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "sandbox":
        return _sandbox(args)
    if args.command == "keys":
        return _keys(args)
    if args.command == "demo":
        from pa_devkit.demo import run_demo

        configure_logging("WARNING", "console")
        return asyncio.run(
            run_demo(
                count=args.count,
                latency_ms=args.latency_ms,
                bootstrap_servers=args.bootstrap_servers,
            )
        )
    raise AssertionError(args.command)


def _keys(args: argparse.Namespace) -> int:
    from pa_devkit.keys import DEV_P12_PASSWORD, generate_dev_keyset

    password = args.p12_password or DEV_P12_PASSWORD
    try:
        keyset = generate_dev_keyset(
            args.dir, days=args.days, p12_password=password, overwrite=args.force
        )
    except FileExistsError as exc:
        return _fail(f"{exc} (use --force to replace them)", EXIT_FAILED)
    for path in keyset.files():
        print(path)
    print("the service finds them with (the PA_PAS__*_PATH defaults point into ./keys):")
    print(f"  PA_PAS__CONSUMER_KEY=<any id> PA_PAS__SIGNING_KEY_PASSWORD={password}")
    if args.dir.resolve() != Path("keys").resolve():
        print(
            f"  PA_PAS__SIGNING_KEY_PATH={keyset.client_signing_p12}"
            f" PA_PAS__ENCRYPTION_CERTIFICATE_PATH={keyset.pas_encryption_certificate}"
            f" PA_PAS__DECRYPTION_KEY_PATH={keyset.client_decryption_key}"
        )
    return EXIT_OK


def _sandbox(args: argparse.Namespace) -> int:
    from pa_devkit.sandbox.app import serve_forever

    configure_logging("INFO", "console")
    try:
        config = config_from_arguments(args)
    except ValueError as exc:
        return _fail(str(exc))
    from service.eventloop import run

    run(serve_forever(config))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
