"""
The line jobs wait in for a slot: highest priority first, first come first served within a
priority, with a guard against starving low priorities.

The queue only orders waiters; the scheduler decides who can take which slot, and *hands* a
freed slot to one waiter (wake-one), the way ``asyncio.Semaphore``, aiolimiter and anyio's
``CapacityLimiter`` do, instead of waking everyone to race for it. Every operation is O(log n)
in the number of waiters.

The starvation guard: once a waiter is the longest waiting of all, at most ``max_overtakes``
waiters that came after it (with a higher priority) are served before it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Collection
from typing import Any

from ._errors import InvalidRequestError
from ._server import Route

__all__ = ["Waiter", "WaitQueue", "check_priority"]

_sequence = itertools.count()


def check_priority(value: object, name: str = "priority") -> None:
    """Refuse a priority that is not an integer (None means "the default"), naming the field."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidRequestError(name, f"{value!r} is not an integer", allowed="int")


class Waiter:
    """One caller waiting for a slot. Internal."""

    __slots__ = ("avoid", "exclude", "future", "gone", "pinned", "priority", "seq")

    def __init__(
        self,
        future: asyncio.Future[Any],
        *,
        priority: int,
        pinned: Route | None,
        avoid: Collection[Route],
        exclude: Collection[Route],
    ) -> None:
        self.future = future
        self.priority = priority
        self.seq = next(_sequence)
        self.pinned = pinned
        self.avoid = avoid
        self.exclude = exclude
        self.gone = False  # served, cancelled or timed out: skipped wherever it still sits

    def key(self) -> tuple[int, int]:
        """Sort key: higher priority first, then older first."""
        return (-self.priority, self.seq)


class WaitQueue:
    """Waiters in priority order, with the oldest one known for the starvation guard."""

    __slots__ = ("_by_age", "_heap", "_overtakes", "count", "max_overtakes")

    def __init__(self, max_overtakes: int) -> None:
        self._heap: list[tuple[int, int, Waiter]] = []
        self._by_age: deque[Waiter] = deque()
        self._overtakes = 0
        self.max_overtakes = max_overtakes
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def push(self, waiter: Waiter) -> None:
        """Add a waiter at its place."""
        heapq.heappush(self._heap, (-waiter.priority, waiter.seq, waiter))
        self._by_age.append(waiter)
        self.count += 1

    def remove(self, waiter: Waiter) -> None:
        """Take a waiter out (lazily: it is skipped when it comes up)."""
        if not waiter.gone:
            waiter.gone = True
            self.count -= 1

    def next_up(self) -> Waiter | None:
        """The waiter to serve next (not removed), starvation guard applied."""
        heap, by_age = self._heap, self._by_age
        while heap and heap[0][2].gone:
            heapq.heappop(heap)
        while by_age and by_age[0].gone:
            by_age.popleft()
        if not heap:
            return None
        head = heap[0][2]
        oldest = by_age[0]
        if head is not oldest and self._overtakes >= self.max_overtakes:
            return oldest
        return head

    def served(self, waiter: Waiter) -> None:
        """Record that ``waiter`` got its slot (and whether it overtook an older one)."""
        by_age = self._by_age
        oldest = by_age[0] if by_age else None
        self._overtakes = 0 if waiter is oldest else self._overtakes + 1
        self.remove(waiter)
