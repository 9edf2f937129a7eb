"""RedisBackend: the pool's shared state in Redis, one Lua script (one round trip) per call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Self, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .._backend import BreakerView, Grant, SharedState, SlotSpec
from . import _scripts
from ._errors import BackendUnavailableError
from ._fallback import UNAVAILABLE, Fallback, OnUnavailable
from ._local import LocalShare
from ._wakeup import Wakeups

__all__ = ["RedisBackend"]

T = TypeVar("T")

logger = logging.getLogger("modelslab_async.redis")

_BREAKER_VIEWS: tuple[BreakerView, ...] = ("closed", "open", "half-open")


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class RedisBackend:
    """
    Slots, cooldowns and breakers shared by every process that uses the same Redis namespace.

    Implements :class:`~modelslab_async._backend.CoordinationBackend`. Build it with
    :meth:`from_url` (or pass a ``redis.asyncio.Redis`` you configured), hand it to each
    process's pool, and close it with :meth:`aclose` (or use ``async with``).

    The guarantees (capacity, cooldowns, breakers, wake-ups, an unreachable Redis, no API
    keys) are those of :mod:`modelslab_async.redis`. One backend per process and event loop.

    Args:
        client: A ``redis.asyncio.Redis``; closed by :meth:`aclose` only when built by
            :meth:`from_url`.
        namespace: Prefix (and Cluster hash tag) of every key; pools sharing servers share it.
        lease_ttl: Seconds a lease lives without renewal.
        on_unavailable: ``"fail"``: calls raise :class:`BackendUnavailableError` while Redis
            is unreachable. ``"local-share"``: this process then uses ``capacity //
            expected_processes`` (at least one) of each server, until Redis answers again.
        expected_processes: How many processes share the servers; needed by ``"local-share"``.
        poll_interval: Longest wait in :meth:`wait_for_release` without a message.
        reconnect_interval: How often a backend in local-share mode tries Redis again.
        auto_renew: Renew live leases in a background task (off if the pool calls
            :meth:`renew` itself).
    """

    def __init__(
        self,
        client: Redis,
        *,
        namespace: str = "modelslab",
        lease_ttl: float = 30.0,
        on_unavailable: OnUnavailable = "fail",
        expected_processes: int | None = None,
        poll_interval: float = 1.0,
        reconnect_interval: float = 1.0,
        auto_renew: bool = True,
    ) -> None:
        if not lease_ttl > 0:
            raise ValueError(f"lease_ttl must be positive, not {lease_ttl!r}")
        self._client = client
        self._owns_client = False
        self._keys = _scripts.Keys(namespace)
        self.namespace = namespace
        self.lease_ttl = lease_ttl
        self.on_unavailable: OnUnavailable = on_unavailable
        self.expected_processes = expected_processes
        self._lease_ms = _ms(lease_ttl)
        self._poll_interval = poll_interval
        self._auto_renew = auto_renew
        register = client.register_script
        self._acquire = register(_scripts.ACQUIRE)
        self._renew = register(_scripts.RENEW)
        self._release = register(_scripts.RELEASE)
        self._cool_down = register(_scripts.COOL_DOWN)
        self._failure = register(_scripts.FAILURE)
        self._success = register(_scripts.SUCCESS)
        self._states = register(_scripts.STATES)
        self._live: dict[tuple[str, str], None] = {}  # (server, holder) of leases held here
        self._fallback = Fallback(
            on_unavailable,
            expected_processes=expected_processes,
            lease_ttl=lease_ttl,
            reconnect_interval=reconnect_interval,
            held=lambda: list(self._live),
            hand_back=self._hand_back,
        )
        self._renew_failing = False
        self._wakeups = Wakeups(client, self._keys.channel)
        self._seen: ContextVar[int | None] = ContextVar(f"modelslab-redis-{id(self)}", default=None)
        self._renewer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = "modelslab",
        lease_ttl: float = 30.0,
        on_unavailable: OnUnavailable = "fail",
        expected_processes: int | None = None,
        timeout: float = 2.0,
        **options: Any,
    ) -> Self:
        """
        Connect to Redis at ``url`` (``redis://``, ``rediss://`` or ``unix://``); lazily.

        Args:
            url: The Redis URL; it may carry a password, which is never logged.
            timeout: Seconds to connect and to wait for each answer before Redis counts as
                unreachable.
            options: Passed to the constructor (``poll_interval``, ``reconnect_interval``,
                ``auto_renew``).
        """
        # One quick retry: it rides over a stale pooled connection after a Redis restart. Every
        # script is safe to run twice except a failure count, which may then count twice.
        client = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        backend = cls(
            client,
            namespace=namespace,
            lease_ttl=lease_ttl,
            on_unavailable=on_unavailable,
            expected_processes=expected_processes,
            **options,
        )
        backend._owns_client = True
        return backend

    def __repr__(self) -> str:
        mode = "local-share" if self.local_share else "redis"
        return (
            f"<RedisBackend namespace={self.namespace!r} mode={mode} "
            f"live={len(self._live)} lease_ttl={self.lease_ttl}>"
        )

    async def __aenter__(self) -> Self:
        """Check that Redis answers (or enter local-share mode) and subscribe to releases."""
        try:
            await self._run(lambda: self._bool(self._client.ping()), lambda local: True)
        except BaseException:
            await self.aclose()
            raise
        self._wakeups.start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._poll_interval):
                await self._wakeups.subscribed.wait()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def local_share(self) -> bool:
        """True while Redis is unreachable and this process uses its local share."""
        return self._fallback.local is not None

    # -- the protocol ---------------------------------------------------------------------

    async def acquire(
        self,
        candidates: Sequence[SlotSpec],
        *,
        holder: str,
        least_loaded: bool = False,
        weights: Sequence[float] | None = None,
    ) -> Grant | None:
        """
        Take one slot for ``holder``: on the first candidate that can take it, or with
        ``least_loaded`` on the one with the lowest ``(holders + 1) * weight / capacity``.

        Skips servers cooling down or with an open breaker, and grants a half-open server's
        probe to one holder in all processes. Returns None when no candidate can take a job
        now. One round trip. Calling it again for the same holder returns the slot it holds.

        Raises:
            BackendUnavailableError: Redis is unreachable and ``on_unavailable="fail"``.
        """
        if not candidates:
            return None
        weights = list(weights) if weights is not None else [1.0] * len(candidates)
        if len(weights) != len(candidates):
            raise ValueError("weights must have one value per candidate")
        self._seen.set(self._wakeups.generation)
        grant = await self._run(
            lambda: self._acquire_remote(candidates, holder, least_loaded, weights),
            lambda local: local.acquire(
                candidates, holder, least_loaded=least_loaded, weights=weights
            ),
        )
        if grant is not None:
            self._live[(grant.server, holder)] = None
            self._start_renewer()
        return grant

    async def _acquire_remote(
        self,
        candidates: Sequence[SlotSpec],
        holder: str,
        least_loaded: bool,
        weights: Sequence[float],
    ) -> Grant | None:
        keys: list[str] = []
        args: list[str | int | float] = [holder, self._lease_ms, "1" if least_loaded else "0"]
        for spec, weight in zip(candidates, weights, strict=True):
            keys += self._keys.acquire(spec.server)
            args += [spec.capacity, repr(float(weight))]
        try:
            index, probe = await self._acquire(keys=keys, args=args)
        except (asyncio.CancelledError, *UNAVAILABLE):
            # The script may have run and the answer been lost: give back what it may have
            # taken (best effort, in the background) rather than leave it to expire.
            self._spawn(self._release_remote([c.server for c in candidates], holder))
            raise
        if not index:
            return None
        return Grant(candidates[int(index) - 1].server, probe=bool(probe))

    async def release(self, server: str, holder: str) -> None:
        """
        Give back ``holder``'s slot on ``server`` (none held: nothing) and wake waiters.

        Never raises for an unreachable Redis: the lease is no longer renewed and expires
        within ``lease_ttl``.
        """
        self._live.pop((server, holder), None)
        if self._closed:
            return
        try:
            await self._run(
                lambda: self._release_remote([server], holder),
                lambda local: self._release_local(local, server, holder),
            )
        except BackendUnavailableError as exc:
            logger.debug("release of a slot on %s left to expire: %s", server, exc)

    async def _release_remote(self, servers: Sequence[str], holder: str) -> None:
        keys = [key for s in servers for key in (self._keys.slots(s), self._keys.probe(s))]
        await self._release(keys=keys, args=[holder, self._keys.channel])

    def _release_local(self, local: LocalShare, server: str, holder: str) -> None:
        if local.release(server, holder):
            self._wakeups.notify()

    async def renew(self, leases: Sequence[tuple[str, str]]) -> None:
        """
        Extend the leases ``(server, holder)`` of live jobs by ``lease_ttl``. A lease that
        had already expired and been dropped (this process stalled longer than ``lease_ttl``,
        or Redis lost its data) is counted again, with a warning: its job is still running on
        the server, so it occupies a slot whoever was granted one meanwhile; new jobs wait.

        Raises:
            BackendUnavailableError: Redis is unreachable and ``on_unavailable="fail"``.
        """
        leases = list(leases)
        if not leases:
            return
        lost = await self._run(
            lambda: self._renew_remote(leases), lambda local: local.renew(leases)
        )
        for server, holder in lost:
            logger.warning(
                "the lease of %s on %s had expired before it was renewed (a stall longer "
                "than lease_ttl, or Redis lost its data); its running job is counted again",
                holder,
                server,
            )

    async def _renew_remote(self, leases: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        keys = [key for s, _ in leases for key in (self._keys.slots(s), self._keys.probe(s))]
        alive = await self._renew(keys=keys, args=[self._lease_ms, *(h for _, h in leases)])
        return [lease for lease, ok in zip(leases, alive, strict=True) if not ok]

    async def cool_down(self, server: str, seconds: float) -> None:
        """
        Keep ``server`` out for ``seconds`` from now (Redis's clock), unless it is already
        out for longer: a cooldown only lengthens.

        Raises:
            BackendUnavailableError: Redis is unreachable and ``on_unavailable="fail"``.
        """
        if seconds <= 0:
            return
        await self._run(
            lambda: self._cool_down_remote(server, seconds),
            lambda local: local.cool_down(server, seconds),
        )

    async def _cool_down_remote(self, server: str, seconds: float) -> None:
        await self._cool_down(keys=[self._keys.cooldown(server)], args=[_ms(seconds)])

    async def record_failure(
        self,
        server: str,
        *,
        threshold: int,
        open_for: float,
        fatal: bool = False,
        probe: bool = False,
    ) -> bool:
        """
        Count a failed call; returns True when this failure opened the breaker.

        Closed: the ``threshold``-th consecutive failure (or a ``fatal`` one) opens it for
        ``open_for`` seconds. Open or half-open: only the probe's failure counts, and it
        opens the breaker again.

        Raises:
            BackendUnavailableError: Redis is unreachable and ``on_unavailable="fail"``.
        """
        args = [threshold, _ms(open_for), int(fatal), int(probe), _scripts.STATE_TTL_MS]
        keys = self._keys.breaker(server)
        return await self._run(
            lambda: self._bool(self._failure(keys=keys, args=args)),
            lambda local: local.record_failure(
                server, threshold=threshold, open_for=open_for, fatal=fatal, probe=probe
            ),
        )

    async def record_success(self, server: str, *, probe: bool = False) -> None:
        """
        A call succeeded: while closed the failure count starts again; the probe's success
        closes the breaker (and wakes waiters). Other successes while open change nothing.

        Raises:
            BackendUnavailableError: Redis is unreachable and ``on_unavailable="fail"``.
        """
        args: list[int | str] = [int(probe), self._keys.channel]
        keys = self._keys.breaker(server)
        closed = await self._run(
            lambda: self._bool(self._success(keys=keys, args=args)),
            lambda local: local.record_success(server, probe=probe),
        )
        if closed and self.local_share:
            self._wakeups.notify()

    async def states(self, servers: Sequence[str]) -> list[SharedState]:
        """
        Each server's shared state, in the order asked (one round trip).

        Raises:
            BackendUnavailableError: Redis is unreachable and ``on_unavailable="fail"``.
        """
        servers = list(servers)
        if not servers:
            return []
        return await self._run(
            lambda: self._states_remote(servers), lambda local: local.states(servers)
        )

    async def _states_remote(self, servers: Sequence[str]) -> list[SharedState]:
        keys = [key for server in servers for key in self._keys.state(server)]
        flat = await self._states(keys=keys)
        return [
            SharedState(
                server=server,
                holders=int(flat[4 * i]),
                cooldown_left=int(flat[4 * i + 1]) / 1000,
                breaker=_BREAKER_VIEWS[int(flat[4 * i + 2])],
                failures=int(flat[4 * i + 3]),
            )
            for i, server in enumerate(servers)
        ]

    async def wait_for_release(self, timeout: float) -> None:
        """
        Return when a slot may have been freed anywhere, or after ``timeout`` seconds (at
        most ``poll_interval``: pub/sub can lose messages, so the caller looks again).

        Returns at once when a release was announced since this task's last :meth:`acquire`,
        so a release between a refused acquire and this call is not slept through.
        """
        if self._closed or timeout <= 0:
            return
        self._wakeups.start()
        generation, seen = self._wakeups.generation, self._seen.get()
        if seen is not None and generation > seen:
            self._seen.set(generation)
            return
        await self._wakeups.wait(min(timeout, self._poll_interval))
        self._seen.set(self._wakeups.generation)

    async def aclose(self) -> None:
        """Stop renewing, unsubscribe, close the connections it opened; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._background:  # best-effort releases of cancelled acquires: a short grace
            _, late = await asyncio.wait(self._background, timeout=min(self.lease_ttl, 2.0))
            for task in late:
                task.cancel()
        tasks = [t for t in (self._renewer, self._wakeups.task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._owns_client:
            await self._client.aclose()

    # -- Redis, or the local share ------------------------------------------------------------

    async def _run(self, remote: Callable[[], Awaitable[T]], local: Callable[[LocalShare], T]) -> T:
        if self._closed:
            raise RuntimeError("the RedisBackend is closed")
        return await self._fallback.run(remote, local)

    async def _hand_back(self, local: LocalShare) -> None:
        """Redis is back: count there the leases and cooldowns taken in the meantime."""
        if self._live:
            await self._renew_remote(list(self._live))  # re-adds the leases Redis lost
        for server, left in local.cooldowns().items():
            await self._cool_down_remote(server, left)

    @staticmethod
    async def _bool(call: Awaitable[Any]) -> bool:
        return bool(await call)

    # -- background work ----------------------------------------------------------------------

    def _start_renewer(self) -> None:
        if self._auto_renew and self._renewer is None and not self._closed:
            self._renewer = asyncio.get_running_loop().create_task(
                self._renew_forever(), name="modelslab-redis-renewer"
            )

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            if self._closed:
                return
            if not self._live:
                continue
            try:
                await self.renew(list(self._live))
            except BackendUnavailableError as exc:
                if not self._renew_failing:
                    logger.warning("cannot renew leases: %s", exc)
                self._renew_failing = True
            else:
                self._renew_failing = False

    def _spawn(self, work: Awaitable[None]) -> None:
        async def guarded() -> None:
            with contextlib.suppress(*UNAVAILABLE):
                await work

        task = asyncio.get_running_loop().create_task(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
