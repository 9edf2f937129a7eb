"""Quick unit tests of the Lua scripts on fakeredis (no server needed); the real-server tests in
test_redis_backend.py are the ones that count."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

from modelslab_async._backend import SlotSpec

if TYPE_CHECKING:
    from modelslab_async.redis import RedisBackend

A = SlotSpec("gpu-a:key-3f9a1c", capacity=2)
B = SlotSpec("gpu-b:key-77e0d2", capacity=1)


@pytest.fixture
async def backend(redis_api: ModuleType) -> AsyncIterator[RedisBackend]:
    """A RedisBackend over an in-process fakeredis with Lua."""
    fakeredis = pytest.importorskip("fakeredis", reason="fakeredis[lua] is not installed")
    pytest.importorskip("lupa", reason="fakeredis[lua] is not installed")
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    backend: RedisBackend = redis_api.RedisBackend(client, namespace="unit", auto_renew=False)
    yield backend
    await backend.aclose()
    await client.aclose()


async def test_acquire_release_and_states(backend: RedisBackend) -> None:
    """Capacity, first fit, release by holder and the holder counts."""
    grants = [await backend.acquire([B, A], holder=f"h{n}") for n in range(4)]
    assert [B.server, A.server, A.server, None] == [g.server if g else None for g in grants]
    await backend.release(A.server, "h1")
    await backend.release(A.server, "h1")
    assert [1, 1] == [s.holders for s in await backend.states([A.server, B.server])]


async def test_cooldown_keeps_the_later_deadline(backend: RedisBackend) -> None:
    """cool_down(5) then cool_down(1) leaves about 5 s."""
    await backend.cool_down(A.server, 5)
    await backend.cool_down(A.server, 1)
    assert 4.5 < (await backend.states([A.server]))[0].cooldown_left <= 5
    assert await backend.acquire([A], holder="h") is None


async def test_breaker_states_and_probe(backend: RedisBackend) -> None:
    """Consecutive failures open; after the open time one probe; its success closes."""
    assert not await backend.record_failure(A.server, threshold=2, open_for=0.05)
    assert await backend.record_failure(A.server, threshold=2, open_for=0.05)
    state = (await backend.states([A.server]))[0]
    assert ("open", 2) == (state.breaker, state.failures)
    await asyncio.sleep(0.06)
    assert "half-open" == (await backend.states([A.server]))[0].breaker
    first = await backend.acquire([A], holder="p")
    assert first is not None
    assert first.probe
    assert await backend.acquire([A], holder="q") is None
    await backend.record_success(A.server, probe=True)
    assert "closed" == (await backend.states([A.server]))[0].breaker
