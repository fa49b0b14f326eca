"""engine.pipeline.cutoffs: many deadlines on one loop timer, cut as asyncio.timeout_at would."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
import uvloop

from engine.pipeline.cutoffs import _COMPACT_AT, cutoffs

#: Both loops the engine runs on (uvicorn's "auto" picks uvloop when installed).
RUNNERS = pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])


async def guarded(when: float, call: asyncio.Future[str] | asyncio.Task[str]) -> str:
    """What AttemptDeadline.run does: the call's result, or "cut" when its deadline ended it."""
    timers = cutoffs(asyncio.get_running_loop())
    cut = timers.add(when)
    try:
        result = await call
    except BaseException as exc:
        timers.end(cut)
        if cut.expired(exc):
            return "cut"
        raise
    timers.end(cut)
    cut.expired(None)
    return result


@RUNNERS
def test_each_deadline_cuts_only_its_own_task_in_deadline_order(run: Any) -> None:
    run(_each_deadline_cuts_only_its_own_task_in_deadline_order())


async def _each_deadline_cuts_only_its_own_task_in_deadline_order() -> None:
    loop = asyncio.get_running_loop()
    never: asyncio.Future[str] = loop.create_future()
    now = loop.time()
    # Added latest-first, so every later add re-arms the timer earlier.
    late = asyncio.ensure_future(guarded(now + 0.20, asyncio.shield(never)))
    early = asyncio.ensure_future(guarded(now + 0.05, asyncio.shield(never)))
    answered: asyncio.Future[str] = loop.create_future()
    fine = asyncio.ensure_future(guarded(now + 0.05, answered))
    answered.set_result("ok")
    assert await fine == "ok"
    assert await early == "cut"
    assert loop.time() - now >= 0.05 - 0.002
    assert not late.done()  # its deadline has not come
    assert await late == "cut"
    assert loop.time() - now >= 0.20 - 0.002
    never.cancel()


@RUNNERS
def test_a_deadline_already_past_cuts_at_the_next_turn(run: Any) -> None:
    run(_a_deadline_already_past_cuts_at_the_next_turn())


async def _a_deadline_already_past_cuts_at_the_next_turn() -> None:
    loop = asyncio.get_running_loop()
    never: asyncio.Future[str] = loop.create_future()
    assert await guarded(loop.time() - 1.0, never) == "cut"


@RUNNERS
def test_a_cancellation_from_outside_is_not_a_timeout(run: Any) -> None:
    run(_a_cancellation_from_outside_is_not_a_timeout())


async def _a_cancellation_from_outside_is_not_a_timeout() -> None:
    loop = asyncio.get_running_loop()
    never: asyncio.Future[str] = loop.create_future()
    task = asyncio.ensure_future(guarded(loop.time() + 60, never))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cutoffs(loop)._live == 0


@RUNNERS
def test_an_error_of_the_call_passes_through_and_nothing_is_left_armed_for_it(run: Any) -> None:
    run(_an_error_of_the_call_passes_through_and_nothing_is_left_armed_for_it())


async def _an_error_of_the_call_passes_through_and_nothing_is_left_armed_for_it() -> None:
    loop = asyncio.get_running_loop()
    failing: asyncio.Future[str] = loop.create_future()
    failing.set_exception(TimeoutError("the call's own"))
    with pytest.raises(TimeoutError, match="the call's own"):
        await guarded(loop.time() + 0.01, failing)
    await asyncio.sleep(0.03)  # its deadline passes: nothing is cancelled
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


@RUNNERS
def test_ended_deadlines_do_not_pile_up(run: Any) -> None:
    run(_ended_deadlines_do_not_pile_up())


async def _ended_deadlines_do_not_pile_up() -> None:
    loop = asyncio.get_running_loop()
    timers = cutoffs(loop)
    for _ in range(_COMPACT_AT * 10):
        done: asyncio.Future[str] = loop.create_future()
        done.set_result("ok")
        assert await guarded(loop.time() + 3600, done) == "ok"
    assert len(timers._heap) <= 2 * _COMPACT_AT
    assert timers._live == 0
    assert timers._armed < math.inf  # the earliest stays armed; firing later only drops it
