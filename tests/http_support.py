"""A recording httpx handler for the PAS client tests (used with ``httpx.MockTransport``)."""

from __future__ import annotations

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
