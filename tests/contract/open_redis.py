"""Opens redis stores for the contract suite (written with the redis store)."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest

from tests.contract.cases import Backend


async def open_redis(stack: AsyncExitStack, request: pytest.FixtureRequest) -> Backend:
    raise NotImplementedError("the redis store is not written yet")
