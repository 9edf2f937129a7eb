"""When Redis goes away: fail closed, or a local share of each server; recovery; no key leaks."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import uuid4

import pytest

from modelslab_async._backend import SlotSpec
from modelslab_async._secrets import fingerprint

from ._redis_server import MakeBackend, RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
FOUR = SlotSpec("gpu-a:key-3f9a1c", capacity=4)
ONE = SlotSpec("gpu-b:key-77e0d2", capacity=1)


def holder() -> str:
    return f"job-{uuid4().hex[:12]}"


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_fail_mode_raises_a_typed_error_and_recovers(
    make_backend: MakeBackend, spare_redis: RedisServer, redis_api: ModuleType
) -> None:
    """With Redis down every call but release raises BackendUnavailableError; once it is back
    (empty) it works, and renewals count the jobs still running again."""
    from modelslab_async import ModelsLabError

    backend = make_backend(url=spare_redis.url, timeout=0.5)
    job, kept = holder(), holder()
    assert await backend.acquire([FOUR], holder=job) is not None
    assert await backend.acquire([FOUR], holder=kept) is not None
    spare_redis.stop()
    with pytest.raises(redis_api.BackendUnavailableError, match="unreachable") as caught:
        await backend.acquire([FOUR], holder=holder())
    assert isinstance(caught.value, ModelsLabError)
    for call in (
        lambda: backend.cool_down(FOUR.server, 1),
        lambda: backend.record_failure(FOUR.server, threshold=1, open_for=1),
        lambda: backend.record_success(FOUR.server),
        lambda: backend.states([FOUR.server]),
        lambda: backend.renew([(FOUR.server, job)]),
    ):
        with pytest.raises(redis_api.BackendUnavailableError):
            await call()
    await backend.release(FOUR.server, job)  # never raises: the lease expires by itself
    spare_redis.start()  # an empty server: what was stored is gone, as after a real restart
    assert await backend.acquire([FOUR], holder=holder()) is not None
    assert 1 == (await backend.states([FOUR.server]))[0].holders
    await backend.renew([(FOUR.server, kept)])  # still running: counted again
    assert 2 == (await backend.states([FOUR.server]))[0].holders


async def test_an_unreachable_redis_fails_at_once(
    make_backend: MakeBackend, redis_api: ModuleType
) -> None:
    """Nothing listening: entering the backend raises the typed error, without retrying for long."""
    backend = make_backend(url=f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    with pytest.raises(redis_api.BackendUnavailableError):
        async with backend:
            pass


async def test_local_share_gives_each_process_its_share(
    make_backend: MakeBackend, spare_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis down: capacity // expected_processes (at least one) per server, logged once."""
    backend = make_backend(
        url=spare_redis.url,
        timeout=0.5,
        on_unavailable="local-share",
        expected_processes=3,
        reconnect_interval=60,
    )
    async with backend:
        spare_redis.stop()
        grants = [await backend.acquire([FOUR], holder=holder()) for _ in range(3)]
        assert [True, False, False] == [grant is not None for grant in grants]  # 4 // 3 = 1
        assert await backend.acquire([ONE], holder=holder()) is not None  # 1 // 3 -> 1
        assert await backend.acquire([ONE], holder=holder()) is None
        assert backend.local_share
        assert 1 == len([m for m in warnings_of(caplog) if "unreachable" in m])
        assert "mode=local-share" in repr(backend)


async def test_local_share_counts_the_jobs_already_running(
    make_backend: MakeBackend, spare_redis: RedisServer
) -> None:
    """Leases taken from Redis before it went away use up the local share."""
    backend = make_backend(
        url=spare_redis.url, timeout=0.5, on_unavailable="local-share", expected_processes=2
    )
    running = [holder(), holder()]
    for job in running:
        assert await backend.acquire([FOUR], holder=job) is not None
    spare_redis.stop()
    assert await backend.acquire([FOUR], holder=holder()) is None  # 4 // 2 = 2, both in use
    await backend.release(FOUR.server, running[0])
    assert await backend.acquire([FOUR], holder=holder()) is not None


async def test_local_share_keeps_the_rules(
    make_backend: MakeBackend, spare_redis: RedisServer
) -> None:
    """Cooldowns only lengthen, the breaker counts and probes, renewals work, locally too."""
    backend = make_backend(
        url=spare_redis.url,
        timeout=0.5,
        on_unavailable="local-share",
        expected_processes=1,
        reconnect_interval=60,
    )
    spare_redis.stop()
    await backend.cool_down(FOUR.server, 5)
    await backend.cool_down(FOUR.server, 0.1)
    assert 4.5 < (await backend.states([FOUR.server]))[0].cooldown_left
    assert await backend.acquire([FOUR], holder=holder()) is None
    fail = {"threshold": 2, "open_for": 0.05}
    assert not await backend.record_failure(ONE.server, **fail)
    await backend.record_success(ONE.server)
    assert not await backend.record_failure(ONE.server, **fail)
    assert await backend.record_failure(ONE.server, **fail)
    assert "open" == (await backend.states([ONE.server]))[0].breaker
    assert not await backend.record_failure(ONE.server, **fail)
    await asyncio.sleep(0.1)
    probe = holder()
    assert (await backend.acquire([ONE], holder=probe)).probe
    await backend.renew([(ONE.server, probe)])
    await backend.record_success(ONE.server)  # not the probe: nothing
    assert "half-open" == (await backend.states([ONE.server]))[0].breaker
    await backend.record_success(ONE.server, probe=True)
    assert "closed" == (await backend.states([ONE.server]))[0].breaker


async def test_local_share_hands_back_to_redis_when_it_returns(
    make_backend: MakeBackend, spare_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Once Redis answers again the leases and cooldowns taken meanwhile are counted there."""
    options: dict[str, Any] = {
        "url": spare_redis.url,
        "timeout": 0.5,
        "on_unavailable": "local-share",
        "expected_processes": 2,
        "reconnect_interval": 0.05,
    }
    backend, other = make_backend(**options), make_backend(**options)
    spare_redis.stop()
    during = [holder(), holder()]
    for job in during:
        assert await backend.acquire([FOUR], holder=job) is not None
    await backend.cool_down(ONE.server, 5)
    spare_redis.start()
    await asyncio.sleep(0.1)  # past reconnect_interval
    assert await backend.acquire([FOUR], holder=holder()) is not None  # from Redis again
    assert not backend.local_share
    assert any("answers again" in m for m in warnings_of(caplog))
    state = await other.states([FOUR.server, ONE.server])
    assert 3 == state[0].holders
    assert state[1].cooldown_left > 4.5
    await backend.release(FOUR.server, during[0])
    assert 2 == (await other.states([FOUR.server]))[0].holders


async def test_no_api_key_reaches_redis(
    make_backend: MakeBackend, raw_redis: Any, redis_api: ModuleType
) -> None:
    """After a run that touches every kind of key, no stored key or value holds an API key."""
    api_keys = ["secret-key-alpha-0001", "secret-key-bravo-0002"]
    specs = [SlotSpec(f"gpu-{n}:{fingerprint(key)}", capacity=2) for n, key in enumerate(api_keys)]
    backend = make_backend()
    jobs = [holder() for _ in range(3)]
    for job in jobs:
        await backend.acquire(specs, holder=job, least_loaded=True)
    await backend.release(specs[0].server, jobs[0])
    await backend.cool_down(specs[0].server, 5)
    await backend.record_failure(specs[1].server, threshold=1, open_for=0.05)
    await asyncio.sleep(0.1)
    await backend.acquire(specs[1:], holder=holder())  # the probe key
    await backend.record_failure(specs[0].server, threshold=5, open_for=1)
    stored: list[bytes] = []
    async for key in raw_redis.scan_iter(match=f"{{{backend.namespace}}}*"):  # this test's keys
        stored.append(key)
        kind = (await raw_redis.type(key)).decode()
        if kind == "string":
            stored.append(await raw_redis.get(key))
        elif kind == "zset":
            stored += [member for member, _ in await raw_redis.zrange(key, 0, -1, withscores=True)]
        else:
            pytest.fail(f"unexpected {kind} key {key!r}")
    blob = b"\n".join(stored)
    assert fingerprint(api_keys[0]).encode() in blob  # the scan did see this run's keys
    assert not [key for key in api_keys if key.encode() in blob]


def test_importing_without_redis_py_says_how_to_install_it() -> None:
    """Without redis-py the core imports; modelslab_async.redis fails with the pip command."""
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import modelslab_async\n"
        "try:\n"
        "    import modelslab_async.redis\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "" == result.stderr
    assert "pip install 'modelslab-async[redis]'" in result.stdout
