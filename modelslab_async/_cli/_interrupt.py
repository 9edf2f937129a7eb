"""Running a command's work so that SIGINT (or SIGTERM) stops it cleanly, once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run_interruptibly"]

T = TypeVar("T")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def run_interruptibly(work: Coroutine[Any, Any, T]) -> tuple[T | None, bool]:
    """
    Run ``work`` as a task; the first SIGINT or SIGTERM cancels it, a second one exits at once.

    Returns:
        ``(result, False)`` when the work ended, ``(None, True)`` when a signal cancelled it.
    """
    loop = asyncio.get_running_loop()
    interrupted = False
    installed: list[signal.Signals] = []
    try:
        async with asyncio.TaskGroup() as group:
            task = group.create_task(work)

            def stop() -> None:
                nonlocal interrupted
                if interrupted:
                    # Everything written so far is flushed: the next run resumes from the journal.
                    sys.stderr.write("modelslab-async: interrupted again, exiting now\n")
                    sys.stderr.flush()
                    os._exit(130)
                interrupted = True
                sys.stderr.write(
                    "modelslab-async: interrupted, stopping (Ctrl-C again to quit now)\n"
                )
                sys.stderr.flush()
                task.cancel()

            for signum in _SIGNALS:
                try:
                    loop.add_signal_handler(signum, stop)
                except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover
                    continue
                installed.append(signum)
    finally:
        for signum in installed:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
    if task.cancelled():
        if interrupted:
            return None, True
        raise asyncio.CancelledError
    return task.result(), False
