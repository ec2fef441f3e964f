"""Opens postgres stores for the contract suite (written with the postgres store)."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest

from tests.contract.cases import Backend


async def open_postgres(stack: AsyncExitStack, request: pytest.FixtureRequest) -> Backend:
    raise NotImplementedError("the postgres store is not written yet")
