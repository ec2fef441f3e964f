"""Client CPU per signed + encrypted PAS call: httpx's own transport, httpx + aiohttp, ours.

The service's ``PasClient`` (JWE-encrypt, OAuth1-sign, POST, decrypt the answer) calls the
PAS sandbox running as a separate process with no latency, through

* ``httpx`` with its default transport (httpcore's connection pool), as the service does;
* ``httpx`` with the ``httpx-aiohttp`` transport (``AiohttpTransport``: aiohttp's connector
  underneath the same ``httpx.AsyncClient`` API);
* ``httpx`` with our own transport (``service.pas.native.NativeTransport``: HTTP/1.1
  keep-alive on asyncio, ``PA_PAS__HTTP_TRANSPORT=native``),

at concurrency 1 and 100 (``--concurrency``). For each it reports this process's CPU time
(``time.process_time``) per request, and that minus the crypto of one request (encrypt + sign
+ decrypt with the service's own code, timed separately on the same inputs): what the HTTP
stack and the event loop cost on top of the unavoidable work. Best of ``--repeats`` runs of
``-n`` requests each, the transports interleaved so drift hits both alike.

Usage (from the repository root; needs ``pip install httpx-aiohttp``)::

    .venv/bin/python benchmarks/bench_transport.py [-n 2000] [-r 3] [--concurrency 1,100]
        [--plain-responses] [--max-connections 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import platform
import shutil
import ssl
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import httpx
from benchkit import (
    Children,
    CryptoFloor,
    machine_busy_pct,
    measure_crypto_floor,
    raise_keyboard_interrupt_on_sigterm,
    start_sandbox,
)
from pydantic import SecretStr

from pa_devkit.keys import DEV_P12_PASSWORD, DevKeySet, generate_dev_keyset
from service.domain.ports import PasRequest
from service.pas.bounded import CORRELATION_HEADER
from service.pas.client import PasClient, http_timeout
from service.pas.credentials import Credentials, load_credentials
from service.pas.jwe_codec import JweBodyCodec
from service.security.oauth1 import MastercardOAuth1Auth
from service.settings import PasSettings

CONSUMER_KEY = "points-adjuster-bench"

HttpFactory = Callable[[PasSettings], AbstractAsyncContextManager[httpx.AsyncClient]]


def limits(settings: PasSettings) -> httpx.Limits:
    return httpx.Limits(
        max_connections=settings.max_connections,
        max_keepalive_connections=settings.max_connections,
    )


@asynccontextmanager
async def httpx_default(settings: PasSettings) -> AsyncIterator[httpx.AsyncClient]:
    """What ``service.pas.client.open_http_client`` builds on httpx's own transport (its TLS
    context plays no part: the benchmark's sandbox speaks plain HTTP)."""
    async with httpx.AsyncClient(
        timeout=http_timeout(settings), limits=limits(settings), follow_redirects=False
    ) as client:
        yield client


@asynccontextmanager
async def httpx_aiohttp(settings: PasSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The same client with aiohttp's connector underneath (``httpx_aiohttp``)."""
    from httpx_aiohttp import AiohttpTransport

    transport = AiohttpTransport(limits=limits(settings))
    async with httpx.AsyncClient(
        timeout=http_timeout(settings), transport=transport, follow_redirects=False
    ) as client:
        yield client


@asynccontextmanager
async def httpx_native(settings: PasSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The same client on our own transport (``service.pas.native``)."""
    from service.pas.native import NativeTransport

    transport = NativeTransport(ssl_context=ssl.create_default_context(), limits=limits(settings))
    async with httpx.AsyncClient(
        timeout=http_timeout(settings), transport=transport, follow_redirects=False
    ) as client:
        yield client


TRANSPORTS: dict[str, HttpFactory] = {
    "httpx (httpcore)": httpx_default,
    "httpx + aiohttp": httpx_aiohttp,
    "httpx + native": httpx_native,
}


@dataclass
class Cell:
    transport: str
    concurrency: int
    requests: int
    cpu_us: float = float("inf")  # best of the repeats
    wall_s: float = 0.0
    rate: float = 0.0
    failures: int = 0

    def rest_us(self, crypto_us: float) -> float:
        return self.cpu_us - crypto_us


@dataclass
class Figures:
    encrypt_us: float
    sign_us: float
    decrypt_us: float
    cells: list[Cell]

    @property
    def crypto_us(self) -> float:
        return self.encrypt_us + self.sign_us + self.decrypt_us


def pas_settings(base_url: str, keyset: DevKeySet, max_connections: int) -> PasSettings:
    return PasSettings(
        base_url=base_url,
        allow_plain_http=True,  # the local sandbox: the figures are of plain HTTP
        consumer_key=SecretStr(CONSUMER_KEY),
        signing_key_path=keyset.client_signing_p12,
        signing_key_password=SecretStr(DEV_P12_PASSWORD),
        encryption_certificate_path=keyset.pas_encryption_certificate,
        decryption_key_path=keyset.client_decryption_key,
        max_connections=max_connections,
    )


def make_requests(count: int) -> list[PasRequest]:
    return [
        PasRequest(
            bank_account_number=f"5{index:015d}000",
            points_to_adjust=1 + index % 500,
            adjustment_type_code="GOODWILL",
            adjustment_reason=f"Goodwill credit for case {10_000 + index % 90_000}",
            adjusted_by="agent-0042",
            correlation_id=str(uuid.uuid4()),
        )
        for index in range(count)
    ]


async def drive(client: PasClient, requests: list[PasRequest], concurrency: int) -> int:
    """Send every request with ``concurrency`` workers; the number that did not succeed."""
    pending = iter(requests)
    failures = 0

    async def worker() -> None:
        nonlocal failures
        for request in pending:
            reply = await client.adjust(request, deadline=time.monotonic() + 60)
            if reply.points_adjusted is None:
                failures += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures


async def run_cell(
    factory: HttpFactory,
    settings: PasSettings,
    credentials: Credentials,
    requests: int,
    concurrency: int,
) -> tuple[float, float, int]:
    """(CPU µs per request, wall seconds, failures) of ``requests`` calls after a warm-up."""
    warm = make_requests(max(2 * concurrency, 50))
    measured = make_requests(requests)
    async with factory(settings) as http:
        client = PasClient(http, settings, credentials)
        failures = await drive(client, warm, concurrency)
        gc.collect()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        failures += await drive(client, measured, concurrency)
        cpu1, wall1 = time.process_time(), time.perf_counter()
    return (cpu1 - cpu0) / requests * 1e6, wall1 - wall0, failures


async def crypto_per_request_us(
    settings: PasSettings, credentials: Credentials, iterations: int, repeats: int
) -> tuple[float, float, float]:
    """(encrypt, sign, decrypt) µs of the service's own code for one request's body."""
    codec = JweBodyCodec(credentials.encrypter, credentials.decrypter, settings.encrypted_field)
    url = settings.base_url + settings.adjustment_path
    body = make_requests(1)[0].body()
    wire = codec.encode(body)
    # One real answer, to time its decryption: sent as PasClient sends it (encrypted, signed),
    # but read whole here. (A response hook reading the body broke PasClient's own streamed
    # read of it: httpx.StreamConsumed.)
    async with httpx_default(settings) as http:
        response = await http.post(
            url,
            content=wire,
            headers={
                "Content-Type": codec.content_type,
                "Accept": "application/json",
                CORRELATION_HEADER: str(uuid.uuid4()),
            },
            auth=MastercardOAuth1Auth(credentials.signer),
        )
        if response.status_code != 200:
            raise SystemExit(f"the sandbox refused the probe request: HTTP {response.status_code}")
    answer = response.content

    def best(fn: Callable[[], object]) -> float:
        for _ in range(max(5, iterations // 20)):
            fn()
        result = float("inf")
        for _ in range(repeats):
            start = time.process_time()
            for _ in range(iterations):
                fn()
            result = min(result, (time.process_time() - start) / iterations * 1e6)
        return result

    def decode() -> object:
        return codec.decode(answer)

    return (
        best(lambda: codec.encode(body)),
        best(lambda: credentials.signer.authorization_header("POST", url, wire)),
        best(decode),
    )


async def measure(args: argparse.Namespace, base_url: str, keyset: DevKeySet) -> Figures:
    settings = pas_settings(base_url, keyset, args.max_connections)
    credentials = load_credentials(settings, now=datetime.now(UTC))
    encrypt_us, sign_us, decrypt_us = await crypto_per_request_us(
        settings, credentials, max(200, args.requests // 4), args.repeats
    )
    crypto_us = encrypt_us + sign_us + decrypt_us
    print(
        f"crypto per request with the service's code: {crypto_us:,.0f} µs = encrypt"
        f" {encrypt_us:.0f} + sign {sign_us:.0f} + decrypt {decrypt_us:.0f}"
        + (
            " (the answers are plain JSON: decrypt is a JSON parse)" if args.plain_responses else ""
        ),
        flush=True,
    )
    cells = [
        Cell(name, concurrency, args.requests)
        for name in TRANSPORTS
        for concurrency in args.concurrency
    ]
    for repeat in range(1, args.repeats + 1):
        for cell in cells:
            cpu_us, wall_s, failures = await run_cell(
                TRANSPORTS[cell.transport], settings, credentials, cell.requests, cell.concurrency
            )
            print(
                f"  run {repeat}: {cell.transport:<18} c={cell.concurrency:<4}"
                f" {cpu_us:8,.0f} µs/request  {cell.requests / wall_s:7,.0f} req/s"
                + (f"  {failures} FAILED" if failures else ""),
                flush=True,
            )
            cell.failures += failures
            if cpu_us < cell.cpu_us:
                cell.cpu_us, cell.wall_s = cpu_us, wall_s
                cell.rate = cell.requests / wall_s
    return Figures(encrypt_us, sign_us, decrypt_us, cells)


def report(args: argparse.Namespace, figures: Figures, floor: CryptoFloor) -> dict[int, float]:
    cells, crypto_us = figures.cells, figures.crypto_us
    print()
    print(
        f"client CPU per signed+encrypted POST, best of {args.repeats} x {args.requests:,}"
        f" requests (sandbox process, latency 0, {'plain' if args.plain_responses else 'encrypted'}"
        f" responses, pool {args.max_connections} connections)"
    )
    header = (
        f"{'transport':<20}{'conc':>6}{'CPU µs/req':>12}{'crypto µs':>11}{'rest µs':>10}"
        f"{'req/s':>9}"
    )
    print(header)
    print("-" * len(header))
    for cell in cells:
        print(
            f"{cell.transport:<20}{cell.concurrency:>6}{cell.cpu_us:>12,.0f}{crypto_us:>11,.0f}"
            f"{cell.rest_us(crypto_us):>10,.0f}{cell.rate:>9,.0f}"
            + (f"  ({cell.failures} failed)" if cell.failures else "")
        )
    print("-" * len(header))
    floor_us = floor.adjustment_us(not args.plain_responses)
    print(
        f"rest = CPU per request - the crypto of one request (the service's code); the raw"
        f" RSA/AES floor under that crypto is {floor_us:,.0f} µs."
    )
    print("req/s is bounded by the sandbox's own CPU (it verifies, decrypts and encrypts too).")
    ratios = {}
    for concurrency in args.concurrency:
        by_name = {c.transport: c for c in cells if c.concurrency == concurrency}
        base, other = by_name.get("httpx (httpcore)"), by_name.get("httpx + aiohttp")
        if base and other and base.rest_us(crypto_us) > 0:
            ratio = other.rest_us(crypto_us) / base.rest_us(crypto_us)
            ratios[concurrency] = ratio
            saved = base.cpu_us - other.cpu_us
            print(
                f"c={concurrency}: httpx+aiohttp's rest is {ratio:.2f}x httpcore's: it uses"
                f" {saved:,.0f} µs {'less' if saved >= 0 else 'more'} CPU per request"
                f" ({abs(saved) / base.cpu_us * 100:.0f} % of httpcore's whole request)"
            )
        native = by_name.get("httpx + native")
        if other and native and other.rest_us(crypto_us) > 0:
            saved = other.cpu_us - native.cpu_us
            print(
                f"c={concurrency}: native's rest is"
                f" {native.rest_us(crypto_us) / other.rest_us(crypto_us):.2f}x httpx+aiohttp's:"
                f" {abs(saved):,.0f} µs {'less' if saved >= 0 else 'more'} CPU per request"
            )
    return ratios


def versions() -> dict[str, str | None]:
    names = ("httpx", "httpcore", "httpx-aiohttp", "aiohttp", "anyio", "sniffio", "cryptography")
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--requests", type=int, default=2000, help="per run (2000)")
    parser.add_argument("-r", "--repeats", type=int, default=3, help="runs per cell (3)")
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1, 100],
        help="comma-separated concurrencies (1,100)",
    )
    parser.add_argument("--plain-responses", action="store_true", help="sandbox answers plain")
    parser.add_argument("--max-connections", type=int, default=100, help="pool size (100)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if importlib.util.find_spec("httpx_aiohttp") is None:
        print(
            "bench_transport: httpx-aiohttp is not installed (.venv/bin/pip install httpx-aiohttp)",
            file=sys.stderr,
        )
        return 2
    raise_keyboard_interrupt_on_sigterm()
    found = versions()
    print(
        f"python {platform.python_version()}, "
        + ", ".join(f"{name} {version or 'absent'}" for name, version in found.items()),
        flush=True,
    )
    busy = machine_busy_pct(1.0)
    if busy > 10:
        print(
            f"WARNING: the machine is already {busy:.0f} % busy (other processes): CPU times"
            " per request will be inflated and noisy",
            flush=True,
        )
    floor = measure_crypto_floor(500, 3)
    children = Children()
    workdir = Path(tempfile.mkdtemp(prefix="points-adjuster-transport-"))
    status = 0
    try:
        keyset = generate_dev_keyset(workdir / "keys")
        sandbox = start_sandbox(
            children,
            keys_dir=keyset.directory,
            consumer_key=CONSUMER_KEY,
            latency_ms=0,
            plain_responses=args.plain_responses,
            workdir=workdir,
        )
        figures = asyncio.run(measure(args, sandbox.base_url, keyset))
        ratios = report(args, figures, floor)
        cells = figures.cells
        if any(cell.failures for cell in cells):
            status = 1
        if args.json is not None:
            document = {
                "versions": found,
                "requests": args.requests,
                "repeats": args.repeats,
                "plain_responses": args.plain_responses,
                "machine_busy_pct_before": busy,
                "crypto_us": {
                    "encrypt": figures.encrypt_us,
                    "sign": figures.sign_us,
                    "decrypt": figures.decrypt_us,
                },
                "crypto_floor_us": floor.adjustment_us(not args.plain_responses),
                "cells": [
                    {**asdict(cell), "rest_us": cell.rest_us(figures.crypto_us)} for cell in cells
                ],
                "rest_ratio_aiohttp_vs_httpcore": ratios,
            }
            args.json.write_text(json.dumps(document, indent=2) + "\n")
            print(f"figures written to {args.json}")
    except KeyboardInterrupt:
        print("\ninterrupted: the sandbox was stopped", file=sys.stderr)
        status = 130
    finally:
        children.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
