"""httpx doubles for the PAS client tests: a recording handler (used with
``httpx.MockTransport``) and bodies streamed as a real transport streams them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx


class Recorder:
    """An httpx handler that records requests and answers with a scripted response or error."""

    def __init__(self, answer: httpx.Response | Exception) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class Chunks(httpx.AsyncByteStream):
    """A response body served in chunks, as a transport streams it; counts the chunks pulled."""

    def __init__(self, body: bytes, size: int = 4096, pause_s: float = 0.0) -> None:
        self.body = body
        self.size = size
        self.pause_s = pause_s
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), self.size):
            if self.pause_s:
                await asyncio.sleep(self.pause_s)
            self.pulled += 1
            yield self.body[start : start + self.size]


def streamed(answer: httpx.Response | Exception) -> httpx.Response | Exception:
    """``answer`` with its body streamed, as a real transport delivers it (httpx builds a
    ``Response(content=...)`` already read, which a streaming reader cannot read again)."""
    if isinstance(answer, httpx.Response) and answer.is_stream_consumed:
        return httpx.Response(
            answer.status_code, headers=answer.headers, stream=Chunks(answer.content)
        )
    return answer
