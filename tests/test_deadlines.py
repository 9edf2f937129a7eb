"""Many jobs' deadlines on one timer: asyncio.timeout's rules, one loop timer, bounded memory."""

from __future__ import annotations

import asyncio

import pytest

from modelslab_async._deadlines import Deadlines


async def _sleep_under(deadlines: Deadlines, timeout: float, sleep: float) -> str:
    entry = deadlines.enter(timeout)
    try:
        await asyncio.sleep(sleep)
    except asyncio.CancelledError:
        if deadlines.leave(entry):
            return "timed out"
        raise
    deadlines.leave(entry)
    return "finished"


async def test_a_task_past_its_deadline_is_cancelled_and_told_it_was_the_deadline() -> None:
    deadlines = Deadlines()
    assert await _sleep_under(deadlines, 0.01, 10.0) == "timed out"
    assert len(deadlines) == 0


async def test_a_task_that_ends_in_time_is_left_alone() -> None:
    deadlines = Deadlines()
    assert await _sleep_under(deadlines, 10.0, 0.0) == "finished"
    assert len(deadlines) == 0
    deadlines.close()


async def test_only_the_tasks_past_their_deadline_are_cancelled() -> None:
    deadlines = Deadlines()
    results = await asyncio.gather(
        _sleep_under(deadlines, 0.02, 10.0),
        _sleep_under(deadlines, 5.0, 0.05),
        _sleep_under(deadlines, 0.01, 10.0),
        _sleep_under(deadlines, 5.0, 0.0),
    )
    assert results == ["timed out", "finished", "timed out", "finished"]
    deadlines.close()


async def test_a_later_earlier_deadline_rearms_the_one_timer() -> None:
    deadlines = Deadlines()
    slow = asyncio.create_task(_sleep_under(deadlines, 30.0, 60.0))
    await asyncio.sleep(0)
    # Entered after a 30 s deadline, due much sooner: it must not wait for the first one.
    assert await asyncio.wait_for(_sleep_under(deadlines, 0.01, 10.0), 2.0) == "timed out"
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    deadlines.close()


async def test_a_cancel_from_outside_is_not_mistaken_for_the_deadline() -> None:
    deadlines = Deadlines()
    task = asyncio.create_task(_sleep_under(deadlines, 10.0, 10.0))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(deadlines) == 0
    deadlines.close()


async def test_an_outside_cancel_racing_the_deadline_still_propagates() -> None:
    deadlines = Deadlines()
    entered = asyncio.Event()

    async def body() -> str:
        entry = deadlines.enter(0.0)
        entered.set()
        try:
            await asyncio.sleep(10.0)
        except asyncio.CancelledError:
            if deadlines.leave(entry):
                return "timed out"
            raise
        return "finished"

    task = asyncio.create_task(body())
    await entered.wait()
    # Before the task runs again, its deadline passes (the timer's callback, called here so
    # that the order is certain) and its caller cancels it too: the caller's cancel must win.
    deadlines._fire()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadlines.close()


async def test_leaving_twice_is_harmless() -> None:
    deadlines = Deadlines()
    entry = deadlines.enter(10.0)
    assert deadlines.leave(entry) is False
    assert deadlines.leave(entry) is False
    assert len(deadlines) == 0
    deadlines.close()


async def test_finished_entries_do_not_pile_up_behind_a_long_one() -> None:
    deadlines = Deadlines()
    long = deadlines.enter(600.0)  # at the head of the heap for the whole run
    for _ in range(10_000):
        deadlines.leave(deadlines.enter(600.0))
    assert len(deadlines) == 1
    assert len(deadlines._heap) < 200  # rebuilt as finished entries outnumber live ones
    deadlines.leave(long)
    deadlines.close()


def test_a_deadline_needs_a_running_task() -> None:
    with pytest.raises(RuntimeError):
        Deadlines().enter(1.0)
