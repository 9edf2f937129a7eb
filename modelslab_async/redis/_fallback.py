"""
Where each call goes: to Redis, or, while Redis is unreachable, to this process's local share.

``fail``: an unreachable Redis is a :class:`BackendUnavailableError`. ``local-share``: the first
failure switches to a :class:`LocalShare` (logged once), seeded with the leases the process
holds; Redis is tried again at most every ``reconnect_interval``, and when it answers, what the
process holds and the cooldowns it saw are handed back to Redis before the call itself runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Literal, TypeVar

from redis.exceptions import RedisError

from ._errors import BackendUnavailableError
from ._local import LocalShare

__all__ = ["UNAVAILABLE", "Fallback", "OnUnavailable"]

logger = logging.getLogger("modelslab_async.redis")

OnUnavailable = Literal["fail", "local-share"]
T = TypeVar("T")

# What "Redis did not serve the call" looks like: redis-py's errors (connection, timeout,
# READONLY after a failover, OOM, ...) and socket errors that escape them.
UNAVAILABLE = (RedisError, OSError)


class Fallback:
    """Runs each call on Redis, or on the local share while Redis is unreachable."""

    def __init__(
        self,
        on_unavailable: OnUnavailable,
        *,
        expected_processes: int | None,
        lease_ttl: float,
        reconnect_interval: float,
        held: Callable[[], Iterable[tuple[str, str]]],
        hand_back: Callable[[LocalShare], Awaitable[None]],
    ) -> None:
        if on_unavailable not in ("fail", "local-share"):
            raise ValueError(f"on_unavailable must be 'fail' or 'local-share': {on_unavailable!r}")
        if on_unavailable == "local-share" and (expected_processes or 0) < 1:
            raise ValueError("on_unavailable='local-share' needs expected_processes >= 1")
        self.on_unavailable: OnUnavailable = on_unavailable
        self._processes = expected_processes or 1
        self._lease_ttl = lease_ttl
        self._reconnect_interval = reconnect_interval
        self._held = held
        self._hand_back = hand_back
        self.local: LocalShare | None = None  # set while Redis is unreachable
        self._retry_at = 0.0

    async def run(self, remote: Callable[[], Awaitable[T]], local: Callable[[LocalShare], T]) -> T:
        """``remote()`` on Redis, or ``local(share)`` when Redis is unreachable (local-share)."""
        if self.local is not None and time.monotonic() < self._retry_at:
            return local(self.local)
        try:
            if self.local is not None:
                await self._hand_back(self.local)
            result = await remote()
        except UNAVAILABLE as exc:
            return local(self._unavailable(exc))
        if self.local is not None:
            self.local = None
            logger.warning("Redis answers again: back to the servers' shared capacity")
        return result

    def _unavailable(self, exc: BaseException) -> LocalShare:
        if self.on_unavailable == "fail":
            raise BackendUnavailableError(f"Redis is unreachable: {exc}") from exc
        self._retry_at = time.monotonic() + self._reconnect_interval
        if self.local is None:
            self.local = LocalShare(self._processes, self._lease_ttl)
            for server, holder in self._held():
                self.local.hold(server, holder)
            logger.warning(
                "Redis is unreachable (%s): this process now uses 1/%d of each server's "
                "capacity (at least one slot) until Redis answers again",
                exc,
                self._processes,
            )
        return self.local
