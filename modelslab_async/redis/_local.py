"""
The local share: what one process may use of each server while Redis cannot be reached.

Each server gets ``capacity // expected_processes`` slots in this process (at least one), so
that the processes together stay near the server's capacity without talking to each other.
Leases, cooldowns and breakers follow the same rules as in Redis, on this process's
monotonic clock. It starts from the leases the process already holds, so jobs that were
running when Redis went away still count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from attrs import define, field

from .._backend import BreakerView, Grant, SharedState, SlotSpec

__all__ = ["LocalShare"]


@define
class _Breaker:
    tripped: bool = False
    open_until: float = 0.0
    failures: int = 0
    probe: str | None = None


@define
class _Server:
    holders: dict[str, float] = field(factory=dict)  # holder -> lease deadline
    cooldown_until: float = 0.0
    breaker: _Breaker = field(factory=_Breaker)


class LocalShare:
    """In-memory slots, cooldowns and breakers for one process's share of each server."""

    def __init__(
        self,
        expected_processes: int,
        lease_ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._processes = expected_processes
        self._lease_ttl = lease_ttl
        self._clock = clock
        self._servers: dict[str, _Server] = {}

    def share(self, capacity: int) -> int:
        """This process's share of a server's capacity: never less than one slot."""
        return max(1, capacity // self._processes)

    def _server(self, server: str) -> _Server:
        return self._servers.setdefault(server, _Server())

    def _held(self, server: str, now: float) -> dict[str, float]:
        holders = self._server(server).holders
        for holder in [h for h, deadline in holders.items() if deadline <= now]:
            del holders[holder]
        return holders

    def hold(self, server: str, holder: str) -> None:
        """Count a lease the process already holds (taken while Redis answered)."""
        self._server(server).holders[holder] = self._clock() + self._lease_ttl

    def acquire(
        self,
        candidates: Sequence[SlotSpec],
        holder: str,
        *,
        least_loaded: bool,
        weights: Sequence[float],
    ) -> Grant | None:
        """The same choice as the acquire script, against each server's local share."""
        now = self._clock()
        for spec in candidates:
            state = self._server(spec.server)
            if holder in state.holders:
                state.holders[holder] = now + self._lease_ttl
                return Grant(spec.server, probe=state.breaker.probe == holder)
        best: tuple[float, SlotSpec, bool] | None = None
        for spec, weight in zip(candidates, weights, strict=True):
            state = self._server(spec.server)
            held = self._held(spec.server, now)
            breaker = state.breaker
            if state.cooldown_until > now or breaker.open_until > now:
                continue
            probe = breaker.tripped
            if probe and breaker.probe is not None and breaker.probe in held:
                continue  # half-open, and someone is probing
            share = self.share(spec.capacity)
            if len(held) >= share:
                continue
            load = (len(held) + 1) * weight / share
            if best is None or load < best[0]:
                best = (load, spec, probe)
            if not least_loaded:
                break
        if best is None:
            return None
        _, spec, probe = best
        state = self._server(spec.server)
        state.holders[holder] = now + self._lease_ttl
        if probe:
            state.breaker.probe = holder
        return Grant(spec.server, probe=probe)

    def release(self, server: str, holder: str) -> bool:
        """Give back a lease; True when one was held."""
        state = self._server(server)
        if state.breaker.probe == holder:
            state.breaker.probe = None
        return state.holders.pop(holder, None) is not None

    def renew(self, leases: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Extend live leases (a dropped one is counted again); returns the dropped ones."""
        now = self._clock()
        lost = []
        for server, holder in leases:
            holders = self._held(server, now)
            if holder not in holders:
                lost.append((server, holder))
            holders[holder] = now + self._lease_ttl
        return lost

    def cool_down(self, server: str, seconds: float) -> None:
        """Keep a server out for ``seconds``, unless it is already out for longer."""
        state = self._server(server)
        state.cooldown_until = max(state.cooldown_until, self._clock() + seconds)

    def cooldowns(self) -> dict[str, float]:
        """Seconds left of each cooldown still running."""
        now = self._clock()
        return {
            name: state.cooldown_until - now
            for name, state in self._servers.items()
            if state.cooldown_until > now
        }

    def record_failure(
        self, server: str, *, threshold: int, open_for: float, fatal: bool, probe: bool
    ) -> bool:
        """Count a failure; True when it opened (or reopened) the breaker."""
        breaker = self._server(server).breaker
        if breaker.tripped:
            if not probe:
                return False
            breaker.open_until = self._clock() + open_for
            breaker.probe = None
            return True
        breaker.failures += 1
        if fatal or breaker.failures >= threshold:
            breaker.tripped = True
            breaker.open_until = self._clock() + open_for
            return True
        return False

    def record_success(self, server: str, *, probe: bool) -> bool:
        """A success: resets the count while closed, closes the breaker if it was the probe."""
        breaker = self._server(server).breaker
        if not breaker.tripped:
            breaker.failures = 0
            return False
        if not probe:
            return False
        self._server(server).breaker = _Breaker()
        return True

    def states(self, servers: Sequence[str]) -> list[SharedState]:
        """Each server's state in this process."""
        now = self._clock()
        out = []
        for name in servers:
            state = self._server(name)
            breaker = state.breaker
            view: BreakerView = "closed"
            if breaker.tripped:
                view = "open" if breaker.open_until > now else "half-open"
            out.append(
                SharedState(
                    server=name,
                    holders=len(self._held(name, now)),
                    cooldown_left=max(0.0, state.cooldown_until - now),
                    breaker=view,
                    failures=breaker.failures,
                )
            )
        return out
