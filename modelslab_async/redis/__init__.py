"""
Shared slots, cooldowns and breakers on Redis, for one pool of servers used by many processes.

Every process builds its own ``ServerPool`` with a backend on the same Redis and namespace; the
backend keeps each server's slots (leases held by job ids), its cooldown and its breaker in
Redis, so that the processes together never run more jobs on a server than its capacity::

    from modelslab_async.redis import RedisBackend

    backend = RedisBackend.from_url("redis://127.0.0.1:6379/0", lease_ttl=30.0)

Needs redis-py: ``pip install 'modelslab-async[redis]'``, and Redis 5.0 or newer (tested on 7.0).

What it guarantees:

- **Capacity.** A server never has more live leases than its capacity: the check and the take
  are one Lua script (one round trip), timed by Redis's clock (``TIME``), never a client's.
  A lease lives ``lease_ttl`` seconds and is renewed every ``lease_ttl / 3`` while its job
  runs, so a crashed process's slots come back within ``lease_ttl``; expired leases are
  dropped by every acquire. Release is by holder id: double and late releases change nothing.
- **Cooldowns** only lengthen (the later deadline wins) and are read by the acquire script at
  the moment it routes, in every process; there is no local copy to go stale.
- **Breakers** are shared: the consecutive-failure count, an ``open`` key that expires, and
  a half-open state in which exactly one holder, in all processes, gets the probe; only the
  probe's outcome closes or reopens it.
- **Wake-ups.** A release that frees a slot is published on the namespace's channel; waiters
  in every process return from ``wait_for_release`` about a round trip later. Order within a
  process (FIFO per priority) is the pool's job. Across processes there is none: woken
  processes race, the first acquire script to run wins, and nothing bounds how many races one
  process can lose (no starvation guarantee, only prompt wake-ups). Pub/sub can lose messages
  (a reconnect), so every wait is also capped by ``poll_interval``.
- **Redis unreachable**, as chosen: ``on_unavailable="fail"`` raises
  :class:`BackendUnavailableError` (release never raises: its lease just expires), or
  ``"local-share"`` falls back to ``capacity // expected_processes`` slots per server (at least
  one) in each process, logged once, never the full capacity; when Redis answers again the
  leases and cooldowns taken meanwhile are counted there first.
- **No API keys** reach Redis: only the slot ids (server name and key fingerprint) and holder
  ids the pool passes.

Keys (one hash tag per namespace, see ``_scripts``): ``{modelslab}:<slot id>:slots``,
``:cooldown``, ``:breaker``, ``:open``, ``:probe``, ``:fails``; channel
``{modelslab}:released``. Every key expires.
"""

from __future__ import annotations

try:
    import redis.asyncio as _redis_asyncio  # noqa: F401  (fail here, with the fix, not later)
except ImportError as exc:
    raise ImportError(
        "modelslab_async.redis needs redis-py, which is not installed: "
        "pip install 'modelslab-async[redis]'"
    ) from exc

from ._backend import RedisBackend
from ._enqueue import EnqueueReport, enqueue
from ._errors import BackendUnavailableError
from ._fallback import OnUnavailable
from ._jobrun import LedgerTransport, track_id_for
from ._ledger import Batch
from ._process import JobBusyError, add_job, process_job
from ._relay import RedisWebhookRelay
from ._results import BatchStatus, ServerStatus, WorkerStatus, results, status
from ._worker import Worker, WorkerReport

__all__ = [
    "add_job",
    "BackendUnavailableError",
    "Batch",
    "BatchStatus",
    "enqueue",
    "EnqueueReport",
    "JobBusyError",
    "LedgerTransport",
    "OnUnavailable",
    "process_job",
    "RedisBackend",
    "RedisWebhookRelay",
    "results",
    "ServerStatus",
    "status",
    "track_id_for",
    "Worker",
    "WorkerReport",
    "WorkerStatus",
]
