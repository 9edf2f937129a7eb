"""
Many jobs' deadlines on one timer. Internal.

``asyncio.timeout`` costs a timer per job: a handle built, pushed onto the loop's heap and
cancelled again, for a deadline that almost never fires. A client runs thousands of jobs a
second, nearly all with the same timeout, so their deadlines come in order: here they share
one heap and one loop timer, armed for the earliest deadline only. A job's entry is a tuple
pushed and, when the job ends, marked left; left entries are dropped as they reach the
head, and the heap is rebuilt whenever they outnumber the live ones, so memory follows the
jobs in flight, not the jobs run.

The semantics are ``asyncio.timeout``'s: at the deadline the job's task is cancelled, and
:meth:`Deadlines.leave` says whether the ``CancelledError`` in flight is that cancellation
(then the caller raises its timeout error) or another one (passed on untouched).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

__all__ = ["Deadline", "Deadlines"]


class Deadline:
    """One task's deadline, from :meth:`Deadlines.enter` to :meth:`Deadlines.leave`."""

    __slots__ = ("cancelling", "expired", "left", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.cancelling = task.cancelling()  # cancellations asked before this scope began
        self.expired = False  # the deadline passed: the task was cancelled, the entry popped
        self.left = False  # the scope ended (the entry may wait in the heap to be dropped)


class Deadlines:
    """The deadlines of the jobs a client runs on one event loop, on one loop timer."""

    __slots__ = ("_at", "_dead", "_handle", "_heap", "_loop", "_order")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()  # ties broken by age, never by comparing entries
        self._dead = 0  # entries left but still in the heap
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0  # when the armed timer fires (loop clock)
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        """Deadlines running (entered, neither left nor expired)."""
        return len(self._heap) - self._dead

    def enter(self, timeout: float) -> Deadline:
        """Put the current task under a deadline ``timeout`` seconds from now."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a deadline needs a task")
        if self._loop is not loop:  # first use, or a new loop: the old timer went with it
            self._loop, self._handle = loop, None
        when = loop.time() + timeout
        entry = Deadline(task)
        heapq.heappush(self._heap, (when, next(self._order), entry))
        if self._handle is None or when < self._at:
            self._arm(when)
        return entry

    def leave(self, entry: Deadline) -> bool:
        """
        End a deadline. True when it expired and its cancellation is the one in flight
        (nothing else cancelled the task meanwhile): the caller raises its timeout error
        when the exception it holds is a ``CancelledError``.
        """
        if entry.left:
            return False
        entry.left = True
        if entry.expired:  # popped by _fire already
            return entry.task.uncancel() <= entry.cancelling
        heap = self._heap
        if heap[0][2] is entry:
            heapq.heappop(heap)
            while heap and heap[0][2].left:
                heapq.heappop(heap)
                self._dead -= 1
        else:
            self._dead += 1
            if self._dead > 64 and 2 * self._dead > len(heap):
                self._heap = [item for item in heap if not item[2].left]
                heapq.heapify(self._heap)
                self._dead = 0
        # An empty heap keeps its timer: it fires once for nothing, instead of a timer
        # cancelled and made again for every job when they run one at a time.
        return False

    def close(self) -> None:
        """Drop the timer (the client closed; no deadline is running)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        assert self._loop is not None  # noqa: S101 - set by enter()
        self._at = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        """The earliest deadline came: cancel every task whose deadline has passed."""
        self._handle = None
        assert self._loop is not None  # noqa: S101 - armed by enter()
        now = self._loop.time()
        heap = self._heap
        while heap and (heap[0][2].left or heap[0][0] <= now):
            _, _, entry = heapq.heappop(heap)
            if entry.left:
                self._dead -= 1
                continue
            entry.expired = True
            entry.task.cancel()
        if heap:
            self._arm(heap[0][0])
