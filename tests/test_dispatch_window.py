"""The dispatcher's window of held jobs: FIFO room, handed over, never lost to a cancel."""

from __future__ import annotations

import asyncio

from modelslab_async._dispatch import _Window


async def test_room_is_handed_to_waiters_in_arrival_order() -> None:
    window = _Window(1)
    await window.enter()
    order: list[int] = []

    async def wait(n: int) -> None:
        await window.enter()
        order.append(n)

    waiters = [asyncio.create_task(wait(n)) for n in range(3)]
    await asyncio.sleep(0)
    for _ in range(3):
        window.leave()
        await asyncio.sleep(0)
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2]


async def test_a_waiter_cancelled_after_being_handed_room_passes_it_on() -> None:
    window = _Window(1)
    await window.enter()
    first = asyncio.create_task(window.enter())
    second = asyncio.create_task(window.enter())
    await asyncio.sleep(0)
    window.leave()  # room goes to the first waiter...
    first.cancel()  # ...which is cancelled before it runs: the room must reach the second
    await asyncio.wait_for(second, 1.0)
    assert first.cancelled()


async def test_a_cancelled_waiter_is_skipped_and_room_is_kept() -> None:
    window = _Window(1)
    await window.enter()
    gone = asyncio.create_task(window.enter())
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    window.leave()  # nobody live waits: the room is free again
    await asyncio.wait_for(window.enter(), 1.0)
