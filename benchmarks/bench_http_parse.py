"""CPU of the HTTP/1.1 framing of one PAS exchange: h11's state machine vs our own code.

One exchange is what ``service.pas.native`` does around the socket: encode the signed
request (its headers as httpx builds them, a 1,200-byte JWE body) and parse a 200 answer
with a ``Content-Length`` body. h11 does the same through a fresh ``h11.Connection`` (send
``Request``, ``Data``, ``EndOfMessage``; receive the answer's events), as a transport on it
would per exchange. Best of 5 runs of ``-n`` exchanges each, no sockets involved.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_http_parse.py [-n 20000]
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Sequence
from importlib import metadata

import h11

from service.pas.native import encode_request, parse_head

HEADERS = [
    (b"Host", b"127.0.0.1:8081"),
    (b"Accept", b"application/json"),
    (b"Accept-Encoding", b"identity"),
    (b"Connection", b"keep-alive"),
    (b"User-Agent", b"python-httpx/0.28.1"),
    (b"Content-Type", b"application/json"),
    (b"Correlation-Id", b"0f9c2a8e-5d1b-4a8e-9a51-1c2b3d4e5f60"),
    (b"Authorization", b"OAuth " + b"x" * 600),
    (b"Content-Length", b"1200"),
]
BODY = b"y" * 1200
ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: 900\r\nDate: Mon, 30 Nov 2026 05:00:00 GMT\r\n"
    b"Server: Python/3.11 aiohttp/3.14\r\nX-MC-Correlation-ID: 7d1c-42\r\n\r\n" + b"z" * 900
)


def ours() -> bytes:
    encode_request(b"POST", b"/points-adjustments", HEADERS, BODY)
    end = ANSWER.find(b"\r\n\r\n")
    head = parse_head(ANSWER[:end])
    return ANSWER[end + 4 : end + 4 + head.length]


def with_h11() -> bytes:
    connection = h11.Connection(h11.CLIENT)
    connection.send(h11.Request(method=b"POST", target=b"/points-adjustments", headers=HEADERS))
    connection.send(h11.Data(data=BODY))
    connection.send(h11.EndOfMessage())
    connection.receive_data(ANSWER)
    body = b""
    while True:
        event = connection.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        elif event is h11.NEED_DATA or isinstance(event, h11.EndOfMessage):
            return body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--exchanges", type=int, default=20_000, help="per run (20000)")
    args = parser.parse_args(argv)
    assert ours() == with_h11() == b"z" * 900
    print(f"h11 {metadata.version('h11')}; best of 5 runs of {args.exchanges:,} exchanges")
    for name, exchange in (("ours (service.pas.native)", ours), ("h11", with_h11)):
        best = min(timeit.repeat(exchange, number=args.exchanges, repeat=5))
        print(f"{name:<28}{best / args.exchanges * 1e6:>8.1f} µs per exchange")
    return 0


if __name__ == "__main__":
    sys.exit(main())
