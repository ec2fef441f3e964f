"""A command's time in PAS calls is summed on the clock its task bound (``service.api_clock``):
by the metered decorators of adjustment calls and of history lookups, across the tasks it
starts, and nowhere when no clock is bound."""

from __future__ import annotations

import asyncio

from service import api_clock
from service.api_clock import ApiClock
from service.domain.classification import Observation
from service.domain.ports import PasReply, PasRequest
from service.domain.reconcile import HistoryEntry, HistoryFound
from service.metrics import Metrics
from service.pas.metered import MeteredHistory, MeteredPas
from tests.fakes import FakeHistory, ScriptedPas

REQUEST = PasRequest("5123456789012345000", 250, "GOODWILL", "Late delivery", "agent-1", "c-1")
FOUND = HistoryFound([HistoryEntry("adj-1", 250, "Late delivery ref:abcdefghijkl", "t")])


def applied(duration_s: float) -> PasReply:
    return PasReply(Observation(status=200), duration_s, points_adjusted=250)


async def test_adjustments_and_lookups_of_a_task_add_up_on_its_clock() -> None:
    pas = MeteredPas(ScriptedPas(applied(0.04), applied(0.03)), Metrics())
    readings = iter([100.0, 100.25])  # the lookup starts at 100 s and ends at 100.25 s
    history = MeteredHistory(FakeHistory(FOUND), Metrics(), lambda: next(readings))

    async def lookup_in_a_task_of_its_own() -> None:
        await asyncio.ensure_future(history.lookup(REQUEST.bank_account_number))

    async def one_command() -> ApiClock:
        mine = ApiClock()
        api_clock.bind(mine)
        await pas.adjust(REQUEST, deadline=1e12)
        await lookup_in_a_task_of_its_own()
        await pas.adjust(REQUEST, deadline=1e12)
        return mine

    mine = await asyncio.create_task(one_command())
    assert mine.seconds == 0.04 + 0.25 + 0.03


async def test_each_task_has_its_own_clock_and_a_task_without_one_counts_nowhere() -> None:
    pas = MeteredPas(ScriptedPas(applied(0.5), repeat_last=True), Metrics())

    async def command(calls: int) -> ApiClock:
        mine = ApiClock()
        api_clock.bind(mine)
        for _ in range(calls):
            await pas.adjust(REQUEST, deadline=1e12)
        return mine

    first, second = await asyncio.gather(command(1), command(3))
    await pas.adjust(REQUEST, deadline=1e12)  # this test's own task: no clock bound
    assert (first.seconds, second.seconds) == (0.5, 1.5)
