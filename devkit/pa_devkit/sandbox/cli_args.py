"""The ``sandbox`` command's flags and their translation into a :class:`SandboxConfig`.

``service.cli`` calls :func:`add_sandbox_arguments` on its ``sandbox`` sub-parser and
:func:`config_from_arguments` on the parsed namespace; every bad flag value becomes a
``ValueError`` whose message names the flag, for the CLI to print.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pa_devkit.keys import DevKeySet
from pa_devkit.sandbox.config import SandboxConfig, SandboxSecurity, SandboxTls
from pa_devkit.sandbox.faults import FaultConfig, FaultConfigError
from pa_devkit.sandbox.security import load_security_material
from pa_devkit.sandbox.tls import server_ssl_context
from service.security.errors import SecurityError
from service.security.oauth1 import SIGNATURE_METHODS

DEFAULT_PORT = 8081
DEFAULT_CONSUMER_KEY = "points-adjuster-dev"


def add_sandbox_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sandbox's flags to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default %(default)s)")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="listen port; 0 lets the OS pick one (default %(default)s)",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="fixed delay before each adjustment is applied (default 0); a latency "
        "distribution in --faults takes precedence",
    )
    parser.add_argument(
        "--unknown-account",
        action="append",
        default=[],
        metavar="NUMBER",
        help="answer 404 ACCOUNT_NOT_FOUND for this account (repeatable)",
    )
    parser.add_argument(
        "--path-prefix",
        default="",
        metavar="PREFIX",
        help='prefix of the PAS paths, e.g. "/loyalty" (default none)',
    )
    parser.add_argument(
        "--keys-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="a development key set (as written by 'keys generate'): turns on the "
        "gateway's OAuth 1.0a check and JWE-encrypted bodies, as PAS requires them "
        "(default: off, plain JSON and no signature)",
    )
    parser.add_argument(
        "--previous-keys-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="during a key rotation: the key set being replaced; calls signed with its "
        "signing key and requests encrypted to its PAS key are accepted too (answers go "
        "to --keys-dir's client certificate; with --keys-dir)",
    )
    parser.add_argument(
        "--consumer-key",
        default=DEFAULT_CONSUMER_KEY,
        metavar="KEY",
        help="the consumer key registered with the key set's signing certificate "
        "(default %(default)s; with --keys-dir)",
    )
    parser.add_argument(
        "--signature-method",
        action="append",
        choices=SIGNATURE_METHODS,
        default=None,
        dest="signature_methods",
        metavar="METHOD",
        help="accept only this oauth_signature_method, RSA-SHA256 or RSA-PSS (repeatable; "
        "default both; with --keys-dir)",
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        metavar="FILE.pem",
        help="serve https with this certificate (PEM, chain after it); needs --tls-key",
    )
    parser.add_argument(
        "--tls-key", type=Path, default=None, metavar="FILE.pem", help="its private key (PEM)"
    )
    parser.add_argument(
        "--tls-client-ca",
        type=Path,
        default=None,
        metavar="FILE.pem",
        help="mutual TLS: require a client certificate issued by one of these CAs (with "
        "--tls-cert)",
    )
    parser.add_argument(
        "--plain-responses",
        action="store_true",
        help="answer 200s in plain JSON instead of encrypting them to the client's "
        "certificate (with --keys-dir)",
    )
    parser.add_argument(
        "--faults",
        type=Path,
        default=None,
        metavar="FILE.json",
        help="inject faults from start-up (latency distribution, error rates, rate "
        "limit, hangs, resets, drops after applying); the JSON shape is that of "
        "GET /_sandbox/faults, which can also replace it at run time",
    )


def config_from_arguments(args: argparse.Namespace) -> SandboxConfig:
    """The :class:`SandboxConfig` the flags describe.

    Raises:
        ValueError: a bad value, a missing or unusable key set, an unreadable or invalid
            faults file; the message names the flag.
    """
    keys_dir: Path | None = args.keys_dir
    if keys_dir is None and args.plain_responses:
        raise ValueError("--plain-responses needs --keys-dir (without it no answer is encrypted)")
    if keys_dir is None and args.previous_keys_dir is not None:
        raise ValueError("--previous-keys-dir needs --keys-dir")
    if keys_dir is None and args.signature_methods:
        raise ValueError("--signature-method needs --keys-dir (without it nothing is verified)")
    security = None
    if keys_dir is not None:
        security = SandboxSecurity.from_keyset(
            dev_keyset_in(keys_dir),
            args.consumer_key,
            encrypt_responses=not args.plain_responses,
            signature_methods=args.signature_methods or SIGNATURE_METHODS,
        )
        if args.previous_keys_dir is not None:
            security = security.with_previous(
                dev_keyset_in(args.previous_keys_dir), args.consumer_key
            )
        _check_security(keys_dir, security)
    tls = _tls_from_arguments(args)
    faults = FaultConfig() if args.faults is None else read_faults_file(args.faults)
    return SandboxConfig(
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        unknown_accounts=frozenset(args.unknown_account),
        path_prefix=args.path_prefix,
        security=security,
        tls=tls,
        faults=faults,
    )


def _tls_from_arguments(args: argparse.Namespace) -> SandboxTls | None:
    """The ``--tls-*`` flags as a :class:`SandboxTls`, its files checked now."""
    cert: Path | None = args.tls_cert
    key: Path | None = args.tls_key
    client_ca: Path | None = args.tls_client_ca
    if cert is None and key is None:
        if client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise ValueError("--tls-cert and --tls-key go together")
    tls = SandboxTls(cert, key, client_ca)
    try:
        server_ssl_context(tls)
    except ValueError as exc:
        raise ValueError(f"--tls-cert/--tls-key/--tls-client-ca: {exc}") from exc
    return tls


def dev_keyset_in(directory: Path) -> DevKeySet:
    """The :class:`DevKeySet` in ``directory`` under ``generate_dev_keyset``'s file names.

    Raises:
        ValueError: ``directory`` does not exist or lacks one of the files.
    """
    if not directory.is_dir():
        raise ValueError(
            f"--keys-dir {directory}: no such directory (create one with 'keys generate')"
        )
    keyset = DevKeySet.in_directory(directory)
    missing = [path.name for path in _sandbox_files(keyset) if not path.is_file()]
    if missing:
        raise ValueError(
            f"--keys-dir {directory}: missing {', '.join(missing)} "
            "(is it a key set written by 'keys generate'?)"
        )
    return keyset


def read_faults_file(path: Path) -> FaultConfig:
    """The :class:`FaultConfig` in ``path``; ``ValueError`` naming the file otherwise."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"--faults {path}: cannot read: {exc.strerror or exc}") from exc
    try:
        return FaultConfig.from_json(text)
    except FaultConfigError as exc:
        raise ValueError(f"--faults {path}: {exc}") from exc


def _sandbox_files(keyset: DevKeySet) -> tuple[Path, ...]:
    """The files the sandbox itself reads (not the client's private signing key)."""
    return (
        keyset.client_signing_certificate,
        keyset.client_decryption_certificate,
        keyset.pas_encryption_certificate,
        keyset.pas_decryption_key,
    )


def _check_security(keys_dir: Path, security: SandboxSecurity) -> None:
    try:
        load_security_material(security)
    except SecurityError as exc:
        raise ValueError(f"--keys-dir {keys_dir}: unusable key set: {exc}") from exc
