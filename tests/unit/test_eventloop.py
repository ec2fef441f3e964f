"""The event loop the service runs on follows PA_EVENT_LOOP."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from service.eventloop import run
from service.settings import load_settings


async def loop_type() -> type[asyncio.AbstractEventLoop]:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop())


def test_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PA_EVENT_LOOP", raising=False)
    settings = load_settings()
    assert settings.event_loop == "uvloop"
    assert issubclass(run(loop_type(), settings.event_loop), uvloop.Loop)


def test_standard_loop_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PA_EVENT_LOOP", "asyncio")
    settings = load_settings()
    kind = run(loop_type(), settings.event_loop)
    assert not issubclass(kind, uvloop.Loop)
    assert issubclass(kind, asyncio.BaseEventLoop)


def test_unknown_loop_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.errors import ConfigError

    monkeypatch.setenv("PA_EVENT_LOOP", "tokio")
    with pytest.raises(ConfigError, match="PA_EVENT_LOOP"):
        load_settings()


def test_collect_less_freezes_start_up_and_raises_the_thresholds() -> None:
    import gc

    from service.eventloop import GC_THRESHOLDS, collect_less

    before = gc.get_threshold()
    try:
        collect_less()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
