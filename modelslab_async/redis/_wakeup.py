"""
Wake-ups: one pub/sub subscription per backend, shared by every waiter of the process.

Each release that frees a slot publishes on the namespace's channel. A listener task turns
each message into a new *generation*: every waiter of this process returns at once. Pub/sub
is at most once (a message sent while the connection is down is lost), so a waiter also
returns after a bounded poll interval, and a lost connection wakes everyone too: whoever
waits then asks Redis again rather than trusting that nothing happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

__all__ = ["Wakeups"]

logger = logging.getLogger("modelslab_async.redis")

_UNAVAILABLE = (RedisError, OSError)
_RETRY_FIRST, _RETRY_MAX = 0.05, 1.0  # reconnect backoff of the listener, seconds
_READ_SLICE = 1.0  # the listener reads in slices, which works on every redis-py >= 5


class Wakeups:
    """Generations of release messages, and the listener that counts them."""

    def __init__(self, client: Redis, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._event = asyncio.Event()
        self.generation = 0
        self.subscribed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the listener (in the running loop) if it is not running yet."""
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(
                self._listen(), name="modelslab-redis-wakeups"
            )

    def notify(self) -> None:
        """Start a new generation: every current waiter returns."""
        self.generation += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self, timeout: float) -> None:
        """Return at the next generation, or after ``timeout`` seconds."""
        event = self._event
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()

    async def _listen(self) -> None:
        delay = _RETRY_FIRST
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self.subscribed.set()
                delay = _RETRY_FIRST
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=_READ_SLICE
                    )
                    if message is not None:
                        self.notify()
            except _UNAVAILABLE as exc:
                if self.subscribed.is_set():
                    logger.debug("release channel lost (%s); resubscribing", exc)
                    self.subscribed.clear()
                    self.notify()  # messages may have been lost: let the waiters look again
            finally:
                with contextlib.suppress(*_UNAVAILABLE):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX)
