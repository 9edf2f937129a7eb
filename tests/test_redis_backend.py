"""RedisBackend against a real redis-server: leases, capacity, cooldowns, breakers, wake-ups."""

from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import pytest

from modelslab_async._backend import SlotSpec

from ._redis_server import MakeBackend

if TYPE_CHECKING:
    from modelslab_async.redis import RedisBackend

A = SlotSpec("gpu-a:key-3f9a1c", capacity=2)
B = SlotSpec("gpu-b:key-77e0d2", capacity=2)


def holder() -> str:
    return f"job-{uuid4().hex[:12]}"


async def test_slots_are_taken_up_to_capacity_and_given_back(make_backend: MakeBackend) -> None:
    """Two holders fill a 2-slot server, a third is refused until one releases."""
    backend = make_backend()
    first, second, third = holder(), holder(), holder()
    assert A.server == (await backend.acquire([A], holder=first)).server
    assert await backend.acquire([A], holder=second) is not None
    assert await backend.acquire([A], holder=third) is None
    await backend.release(A.server, first)
    assert await backend.acquire([A], holder=third) is not None
    assert [2] == [state.holders for state in await backend.states([A.server])]


async def test_double_and_foreign_release_change_nothing(make_backend: MakeBackend) -> None:
    """Releasing twice, or a slot never held, frees no one else's slot."""
    backend = make_backend()
    first, second = holder(), holder()
    await backend.acquire([A], holder=first)
    await backend.acquire([A], holder=second)
    await backend.release(A.server, first)
    await backend.release(A.server, first)
    await backend.release(A.server, "never-held")
    await backend.release(B.server, second)  # wrong server
    assert 1 == (await backend.states([A.server]))[0].holders
    assert await backend.acquire([A], holder=holder()) is not None
    assert await backend.acquire([A], holder=holder()) is None


async def test_a_retried_acquire_keeps_the_holders_slot(make_backend: MakeBackend) -> None:
    """Acquiring again for the same holder (a lost answer retried) takes no second slot."""
    backend = make_backend()
    job = holder()
    grants = [await backend.acquire([A, B], holder=job) for _ in range(3)]
    assert {A.server} == {grant.server for grant in grants if grant is not None}
    assert [1, 0] == [state.holders for state in await backend.states([A.server, B.server])]


async def test_first_fit_follows_the_candidates_order(make_backend: MakeBackend) -> None:
    """Without least_loaded the first candidate with room wins."""
    backend = make_backend()
    servers = [(await backend.acquire([A, B], holder=holder())).server for _ in range(4)]
    assert [A.server, A.server, B.server, B.server] == servers
    assert await backend.acquire([A, B], holder=holder()) is None


async def test_least_loaded_uses_holders_weight_and_capacity(make_backend: MakeBackend) -> None:
    """least_loaded picks the lowest (holders + 1) * weight / capacity, first on ties."""
    backend = make_backend()
    big = SlotSpec("gpu-big:key-000001", capacity=4)
    order = [
        (await backend.acquire([A, big], holder=holder(), least_loaded=True)).server
        for _ in range(3)
    ]
    # A: 1/2, big: 1/4 -> big; then A 1/2 vs big 2/4 -> A (first); then A 2/2 vs big 2/4 -> big
    assert [big.server, A.server, big.server] == order
    slow = await backend.acquire([A, big], holder=holder(), least_loaded=True, weights=[1, 9])
    assert A.server == slow.server


async def test_an_expired_lease_is_dropped_then_counted_again_by_its_renewal(
    make_backend: MakeBackend,
) -> None:
    """A holder that stops renewing loses its slot after lease_ttl; if it was only stalled, its
    late renewal counts its still-running job again, so new jobs wait rather than overload."""
    one = SlotSpec("gpu-one:key-abcdef", capacity=1)
    stalled = make_backend(lease_ttl=0.3, auto_renew=False)
    other = make_backend(lease_ttl=0.3, auto_renew=False)
    job = holder()
    assert await stalled.acquire([one], holder=job) is not None
    assert await other.acquire([one], holder=holder()) is None
    await asyncio.sleep(0.35)
    taken = holder()
    assert await other.acquire([one], holder=taken) is not None
    await stalled.renew([(one.server, job)])
    assert 2 == (await other.states([one.server]))[0].holders
    await other.release(one.server, taken)
    assert await other.acquire([one], holder=holder()) is None
    await stalled.release(one.server, job)
    assert await other.acquire([one], holder=holder()) is not None


async def test_live_leases_are_renewed_in_the_background(make_backend: MakeBackend) -> None:
    """With auto_renew a held lease outlives lease_ttl several times over."""
    one = SlotSpec("gpu-one:key-abcdef", capacity=1)
    owner = make_backend(lease_ttl=0.3)
    other = make_backend(lease_ttl=0.3)
    job = holder()
    await owner.acquire([one], holder=job)
    await asyncio.sleep(0.8)
    assert await other.acquire([one], holder=holder()) is None
    await owner.release(one.server, job)
    assert await other.acquire([one], holder=holder()) is not None


async def test_renew_extends_the_given_leases(make_backend: MakeBackend) -> None:
    """renew() called by the pool keeps leases alive without the background task."""
    one = SlotSpec("gpu-one:key-abcdef", capacity=1)
    owner = make_backend(lease_ttl=0.3, auto_renew=False)
    other = make_backend(lease_ttl=0.3, auto_renew=False)
    job = holder()
    await owner.acquire([one], holder=job)
    for _ in range(4):
        await asyncio.sleep(0.15)
        await owner.renew([(one.server, job)])
    assert await other.acquire([one], holder=holder()) is None


async def test_capacity_holds_under_many_concurrent_acquirers(make_backend: MakeBackend) -> None:
    """Three backends x 12 tasks hammering a 3-slot server never hold more than 3 at once."""
    server = SlotSpec("gpu-c:key-c0ffee", capacity=3)
    backends = [make_backend() for _ in range(3)]
    running = peak = done = 0

    async def worker(backend: RedisBackend) -> None:
        nonlocal running, peak, done
        for _ in range(8):
            job = holder()
            while await backend.acquire([server], holder=job) is None:
                await backend.wait_for_release(1.0)
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.002)
            running -= 1
            await backend.release(server.server, job)
            done += 1

    async with asyncio.TaskGroup() as group:
        for n in range(36):
            group.create_task(worker(backends[n % 3]))
    assert (3, 288) == (peak, done)
    assert 0 == (await backends[0].states([server.server]))[0].holders


async def test_a_cooldown_only_lengthens(make_backend: MakeBackend) -> None:
    """A shorter cooldown after a longer one keeps the longer; the server is skipped meanwhile."""
    backend, other = make_backend(), make_backend()
    await backend.cool_down(A.server, 1.5)
    await other.cool_down(A.server, 0.1)
    left = (await other.states([A.server]))[0].cooldown_left
    assert 1.3 < left <= 1.5
    assert B.server == (await other.acquire([A, B], holder=holder())).server
    await backend.cool_down(A.server, 3.0)
    assert 2.8 < (await other.states([A.server]))[0].cooldown_left <= 3.0


async def test_a_cooldown_ends_by_itself(make_backend: MakeBackend) -> None:
    """After its time a cooled server takes jobs again, in every process."""
    backend, other = make_backend(), make_backend()
    await backend.cool_down(A.server, 0.15)
    assert await other.acquire([A], holder=holder()) is None
    await asyncio.sleep(0.2)
    assert await other.acquire([A], holder=holder()) is not None


async def test_breaker_opens_after_consecutive_failures(make_backend: MakeBackend) -> None:
    """A success while closed resets the count; the threshold-th consecutive failure opens."""
    backend = make_backend()
    fail = {"threshold": 3, "open_for": 5.0}
    assert not await backend.record_failure(A.server, **fail)
    assert not await backend.record_failure(A.server, **fail)
    await backend.record_success(A.server)
    assert not await backend.record_failure(A.server, **fail)
    assert not await backend.record_failure(A.server, **fail)
    assert "closed" == (await backend.states([A.server]))[0].breaker
    assert await backend.record_failure(A.server, **fail)
    state = (await backend.states([A.server]))[0]
    assert ("open", 3) == (state.breaker, state.failures)
    assert await backend.acquire([A], holder=holder()) is None
    # further failures of calls that were not the probe change nothing
    assert not await backend.record_failure(A.server, **fail)


async def test_a_fatal_failure_opens_at_once(make_backend: MakeBackend) -> None:
    """fatal=True opens the breaker on the first failure."""
    backend = make_backend()
    assert await backend.record_failure(A.server, threshold=5, open_for=5.0, fatal=True)
    assert "open" == (await backend.states([A.server]))[0].breaker


async def test_exactly_one_process_probes_a_half_open_server(make_backend: MakeBackend) -> None:
    """Once open time is up, of six clients acquiring at once only one gets the probe."""
    backends = [make_backend() for _ in range(6)]
    await backends[0].record_failure(A.server, threshold=1, open_for=0.15)
    await asyncio.sleep(0.2)
    assert "half-open" == (await backends[1].states([A.server]))[0].breaker
    grants = await asyncio.gather(*(b.acquire([A], holder=holder()) for b in backends))
    winners = [grant for grant in grants if grant is not None]
    assert 1 == len(winners)
    assert winners[0].probe


async def test_only_the_probe_closes_or_reopens(make_backend: MakeBackend) -> None:
    """Non-probe outcomes leave a half-open breaker alone; the probe's failure reopens it, its
    success closes it."""
    backend, other = make_backend(), make_backend()
    fail = {"threshold": 1, "open_for": 0.15}
    await backend.record_failure(A.server, **fail)
    await asyncio.sleep(0.2)
    probe = holder()
    assert (await backend.acquire([A], holder=probe)).probe
    await other.record_success(A.server)
    assert not await other.record_failure(A.server, **fail)
    assert "half-open" == (await other.states([A.server]))[0].breaker
    assert await other.acquire([A], holder=holder()) is None  # someone is probing
    assert await backend.record_failure(A.server, **fail, probe=True)
    await backend.release(A.server, probe)
    assert "open" == (await other.states([A.server]))[0].breaker
    await asyncio.sleep(0.2)
    second = holder()
    assert (await other.acquire([A], holder=second)).probe
    await other.record_success(A.server, probe=True)
    await other.release(A.server, second)
    state = (await backend.states([A.server]))[0]
    assert ("closed", 0) == (state.breaker, state.failures)
    assert not (await backend.acquire([A], holder=holder())).probe
    assert await backend.acquire([A], holder=holder()) is not None


async def test_a_dead_probe_lets_another_probe_after_its_lease(make_backend: MakeBackend) -> None:
    """A probe whose process died (no renewal) hands the probe on when its lease runs out."""
    dead = make_backend(lease_ttl=0.2, auto_renew=False)
    other = make_backend(lease_ttl=0.2)
    await dead.record_failure(A.server, threshold=1, open_for=0.05)
    await asyncio.sleep(0.1)
    assert (await dead.acquire([A], holder=holder())).probe
    assert await other.acquire([A], holder=holder()) is None
    await asyncio.sleep(0.25)
    assert (await other.acquire([A], holder=holder())).probe


async def test_a_release_wakes_a_waiter_in_another_process(make_backend: MakeBackend) -> None:
    """wait_for_release returns within milliseconds of a release by another client."""
    one = SlotSpec("gpu-one:key-abcdef", capacity=1)
    owner = make_backend()
    async with make_backend(poll_interval=5.0) as waiter:
        job = holder()
        await owner.acquire([one], holder=job)
        latencies = []
        for _ in range(5):
            assert await waiter.acquire([one], holder=holder()) is None
            wait = asyncio.create_task(waiter.wait_for_release(5.0))
            await asyncio.sleep(0.05)
            assert not wait.done()
            released = time.perf_counter()
            await owner.release(one.server, job)
            await wait
            latencies.append(time.perf_counter() - released)
            await owner.acquire([one], holder=(job := holder()))
        assert sorted(latencies)[2] < 0.05, latencies
        assert max(latencies) < 0.5, latencies


async def test_a_wait_without_release_ends_at_its_timeout(make_backend: MakeBackend) -> None:
    """With no release a wait lasts its timeout, capped by poll_interval."""
    async with make_backend(poll_interval=0.2) as backend:
        start = time.perf_counter()
        await backend.wait_for_release(0.1)
        await backend.wait_for_release(10.0)
        assert 0.28 < time.perf_counter() - start < 1.0


async def test_a_release_before_the_wait_is_not_slept_through(make_backend: MakeBackend) -> None:
    """A release announced between a refused acquire and the wait makes the wait return."""
    one = SlotSpec("gpu-one:key-abcdef", capacity=1)
    owner = make_backend()
    async with make_backend(poll_interval=5.0) as waiter:
        job = holder()
        await owner.acquire([one], holder=job)
        assert await waiter.acquire([one], holder=holder()) is None
        await owner.release(one.server, job)
        await asyncio.sleep(0.1)  # the message has arrived before anyone waits
        start = time.perf_counter()
        await waiter.wait_for_release(5.0)
        assert time.perf_counter() - start < 0.05


async def test_keys_are_namespaced_tagged_and_expire(
    make_backend: MakeBackend, raw_redis: Any
) -> None:
    """Every key is under the namespace's hash tag and has a TTL."""
    namespace = f"layout-{uuid4().hex[:6]}"
    backend = make_backend(namespace=namespace)
    await backend.acquire([A, B], holder=holder())
    await backend.cool_down(B.server, 5)
    for _ in range(2):
        await backend.record_failure(A.server, threshold=5, open_for=1)
    c = SlotSpec("gpu-c:key-c0ffee", capacity=1)
    await backend.record_failure(c.server, threshold=1, open_for=0.05)
    await asyncio.sleep(0.1)
    assert (await backend.acquire([c], holder=holder())).probe
    keys = sorted([key.decode() async for key in raw_redis.scan_iter(match=f"*{namespace}*")])
    ttls = [await raw_redis.pttl(key) for key in keys]
    tag = re.escape("{" + namespace + "}")
    assert all(re.fullmatch(tag + r":gpu-[a-c]:key-[0-9a-f]{6}:\w+", key) for key in keys), keys
    assert {
        f"{{{namespace}}}:{A.server}:slots",
        f"{{{namespace}}}:{A.server}:fails",
        f"{{{namespace}}}:{B.server}:cooldown",
        f"{{{namespace}}}:{c.server}:breaker",
        f"{{{namespace}}}:{c.server}:probe",
    } <= set(keys)
    assert all(ttl > 0 for ttl in ttls), dict(zip(keys, ttls, strict=True))


async def test_backend_lifecycle(make_backend: MakeBackend) -> None:
    """aclose is idempotent, the repr carries no URL, a closed backend refuses work."""
    backend = make_backend(url="redis://:hunter2-password@127.0.0.1:1/0")
    assert "hunter2" not in repr(backend)
    await backend.aclose()
    await backend.aclose()
    await backend.release(A.server, "x")  # a no-op, not an error
    await backend.wait_for_release(1.0)
    with pytest.raises(RuntimeError, match="closed"):
        await backend.acquire([A], holder=holder())


async def test_arguments_are_checked(make_backend: MakeBackend, redis_api: object) -> None:
    """Bad settings are ValueErrors when built; an empty candidate list grants nothing."""
    for options in (
        {"lease_ttl": 0},
        {"on_unavailable": "ignore"},
        {"on_unavailable": "local-share"},
        {"namespace": "a{b}"},
        {"namespace": ""},
    ):
        with pytest.raises(ValueError, match=r"lease_ttl|on_unavailable|namespace"):
            make_backend(**options)
    backend = make_backend()
    assert await backend.acquire([], holder=holder()) is None
    with pytest.raises(ValueError, match="weights"):
        await backend.acquire([A, B], holder=holder(), weights=[1.0])
    assert [] == await backend.states([])
