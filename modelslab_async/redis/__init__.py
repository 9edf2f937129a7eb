"""
Shared slots, cooldowns and breakers on Redis, for one pool of servers used by many processes.

Every process builds its own ``ServerPool`` with the same backend settings; the backend keeps
each server's slots (leases held by job ids), its cooldown and its breaker in Redis, so the
processes together never run more jobs on a server than its capacity::

    from modelslab_async.redis import RedisBackend

    backend = RedisBackend.from_url("redis://127.0.0.1:6379/0", lease_ttl=30.0)

Needs redis-py: ``pip install 'modelslab-async[redis]'``.
"""

from __future__ import annotations

try:
    import redis.asyncio as _redis_asyncio  # noqa: F401  (fail here, with the fix, not later)
except ImportError as exc:
    raise ImportError(
        "modelslab_async.redis needs redis-py, which is not installed: "
        "pip install 'modelslab-async[redis]'"
    ) from exc

from ._backend import OnUnavailable, RedisBackend
from ._errors import BackendUnavailableError

__all__ = ["BackendUnavailableError", "OnUnavailable", "RedisBackend"]
