"""The request encoding and answer-head parsing of our own transport (``service.pas.native``)."""

from __future__ import annotations

import httpx
import pytest

from service.pas.native import Framing, encode_request, parse_head


def test_a_request_is_its_line_headers_and_body_as_given() -> None:
    data = encode_request(
        b"POST", b"/points-adjustments?x=1", [(b"Host", b"pas"), (b"Content-Length", b"2")], b"{}"
    )
    assert data == (
        b"POST /points-adjustments?x=1 HTTP/1.1\r\nHost: pas\r\nContent-Length: 2\r\n\r\n{}"
    )


def test_a_chunked_request_body_goes_as_one_chunk() -> None:
    data = encode_request(b"POST", b"/", [(b"Transfer-Encoding", b"chunked")], b"abc")
    assert data.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")


@pytest.mark.parametrize(
    "header",
    [(b"X-Id", b"1\r\nX-Evil: yes"), (b"X-Id", b"1\nX"), (b"X\r\nY", b"1"), (b"X", b"\x00")],
)
def test_a_header_that_would_end_early_is_refused(header: tuple[bytes, bytes]) -> None:
    with pytest.raises(httpx.LocalProtocolError, match="holds CR, LF or NUL"):
        encode_request(b"POST", b"/", [header], b"")


def test_a_head_gives_status_reason_headers_and_length() -> None:
    head = parse_head(
        b"HTTP/1.1 201 Created\r\nContent-Length: 12\r\nX-MC-Correlation-ID:  abc \r\nE:"
    )
    assert (head.status, head.reason, head.framing, head.length) == (
        201,
        b"Created",
        Framing.LENGTH,
        12,
    )
    assert head.headers == [
        (b"Content-Length", b"12"),
        (b"X-MC-Correlation-ID", b"abc"),
        (b"E", b""),
    ]
    assert head.keep_alive


@pytest.mark.parametrize(
    ("text", "framing", "keep_alive"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", Framing.CHUNKED, True),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3",
            Framing.CHUNKED,
            False,
        ),
        (b"HTTP/1.1 200 OK", Framing.CLOSE, False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: Close", Framing.LENGTH, False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 3", Framing.LENGTH, False),
    ],
)
def test_the_framing_and_whether_the_connection_can_carry_another(
    text: bytes, framing: Framing, keep_alive: bool
) -> None:
    head = parse_head(text)
    assert (head.framing, head.keep_alive) == (framing, keep_alive)


@pytest.mark.parametrize("status", [204, 304])
def test_an_answer_without_a_body_has_length_zero(status: int) -> None:
    head = parse_head(b"HTTP/1.1 %d X\r\nContent-Length: 99" % status)
    assert (head.framing, head.length) == (Framing.LENGTH, 0)


def test_an_answer_to_head_has_no_body() -> None:
    assert parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 99", head_request=True).length == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"HTTP/2 200 OK", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 2000 OK", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\n folded: line", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nBad Name: 1", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2", "invalid or conflicting"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip", "unsupported Transfer"),
    ],
)
def test_a_malformed_head_is_a_protocol_error(text: bytes, message: str) -> None:
    with pytest.raises(httpx.RemoteProtocolError, match=message):
        parse_head(text)
