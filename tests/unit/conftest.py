"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest

from service.kafka import runner as runner_module


@pytest.fixture
def quick_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault pauses of a few milliseconds, so the runner's tests do not wait out real backoffs."""
    monkeypatch.setattr(runner_module, "FAULT_FIRST_PAUSE_S", 0.01)
    monkeypatch.setattr(runner_module, "CLAIM_LOST_PAUSE_S", 0.01)
