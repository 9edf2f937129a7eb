"""One pool across processes: ServerPool(backend=RedisBackend) against the standalone fake."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import uuid4

import pytest

from modelslab_async import (
    Client,
    ModelsLabError,
    RetryPolicy,
    Server,
    ServerPool,
    Timeouts,
)
from modelslab_async._pool import scheduler_of
from modelslab_async.testing import FakeModelsLab, FakeServerSpec, Fault

from ._helpers import make_request
from ._redis_server import RedisServer

REPO = Path(__file__).parent.parent
KEYS = ["sk-shared-pool-key-a-0001", "sk-shared-pool-key-b-0002"]


@contextlib.contextmanager
def standalone_fake(*servers: str) -> Iterator[str]:
    """The fake in its own process; yields its base URL."""
    env = {**os.environ, "MODELSLAB_API_KEYS": ",".join(KEYS)}
    command = [sys.executable, "-m", "modelslab_async.testing", "serve", "--port", "0"]
    for server in servers:
        command += ["--server", server]
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("READY "):
                yield line.split()[1]
                break
        else:
            pytest.fail("the fake did not start: " + (proc.stderr.read() if proc.stderr else ""))
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def fake_stats(base_url: str) -> list[dict[str, Any]]:
    root = base_url.split("/api/", maxsplit=1)[0]
    with urllib.request.urlopen(f"{root}/_fake/stats", timeout=5) as answer:  # noqa: S310
        stats: list[dict[str, Any]] = json.loads(answer.read())
    return stats


WORKER = textwrap.dedent(
    """
    import asyncio, os, sys
    from modelslab_async import Client, Img2ImgRequest, Server, ServerPool, Timeouts
    from modelslab_async.redis import RedisBackend

    async def main() -> None:
        base_url, redis_url, namespace, jobs, hold = sys.argv[1:6]
        keys = os.environ["MODELSLAB_API_KEYS"].split(",")
        backend = RedisBackend.from_url(redis_url, namespace=namespace, lease_ttl=1.0)
        servers = [Server(key=k, name=n, max_concurrency=2) for k, n in zip(keys, "ab")]
        pool = ServerPool(servers, routing="least-busy", backend=backend)
        request = Img2ImgRequest(
            model_id="realistic-vision-51", prompt="shared", init_image="https://example.com/x.png"
        )
        async with backend, Client(pool, base_url=base_url, timeouts=Timeouts(job=60)) as client:
            if hold == "hold":
                print("HOLDING", flush=True)
            ok = 0
            async for outcome in client.img2img_batch([request] * int(jobs), concurrency=4):
                ok += outcome.ok
            print("OK", ok, flush=True)

    asyncio.run(main())
    """
)


def worker(base_url: str, redis_url: str, namespace: str, jobs: int, hold: str = "-") -> Any:
    env = {**os.environ, "MODELSLAB_API_KEYS": ",".join(KEYS)}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, base_url, redis_url, namespace, str(jobs), hold],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_four_processes_never_run_more_than_a_servers_slots_on_it(
    redis_server: RedisServer, redis_api: ModuleType
) -> None:
    """Four processes, two servers of 2 slots each, one Redis: the fake's own count of jobs
    outstanding at once on each server never passes 2, and every job succeeds."""
    namespace = f"pool-{uuid4().hex[:8]}"
    with standalone_fake("a:8:0.05", "b:8:0.05") as base_url:
        procs = [worker(base_url, redis_server.url, namespace, 15) for _ in range(4)]
        outputs = [proc.communicate(timeout=120) for proc in procs]
        stats = fake_stats(base_url)
    assert [0, 0, 0, 0] == [proc.returncode for proc in procs], [err for _, err in outputs]
    assert ["OK 15"] * 4 == [out.strip().splitlines()[-1] for out, _ in outputs]
    assert 60 == sum(server["accepted"] for server in stats)
    assert all(server["max_outstanding"] <= 2 for server in stats), stats
    assert {2} == {server["max_outstanding"] for server in stats}  # and both were used fully
    assert not any(key in out + err for out, err in outputs for key in KEYS)


async def test_a_killed_processs_slots_come_back_within_the_lease(
    redis_server: RedisServer, redis_api: ModuleType
) -> None:
    """A process SIGKILLed while its jobs hold every slot: this one gets a slot within
    lease_ttl (1 s here) and a small margin."""
    namespace = f"pool-{uuid4().hex[:8]}"
    with standalone_fake("a:8:30", "b:8:30") as base_url:
        victim = worker(base_url, redis_server.url, namespace, 4, "hold")
        try:
            deadline = time.monotonic() + 30
            while sum(s["accepted"] for s in fake_stats(base_url)) < 4:
                assert time.monotonic() < deadline, "the victim never took its slots"
                await asyncio.sleep(0.05)
            victim.send_signal(signal.SIGKILL)
            victim.communicate(timeout=10)
            killed_at = time.monotonic()
            backend = redis_api.RedisBackend.from_url(
                redis_server.url, namespace=namespace, lease_ttl=1.0
            )
            servers = [
                Server(key=k, name=n, max_concurrency=2) for k, n in zip(KEYS, "ab", strict=True)
            ]
            pool = ServerPool(servers, routing="least-busy", backend=backend)
            async with backend:
                lease = await scheduler_of(pool).acquire(deadline=time.monotonic() + 10)
                waited = time.monotonic() - killed_at
                await scheduler_of(pool).give_back(lease)
        finally:
            with contextlib.suppress(ProcessLookupError):
                victim.kill()
    assert waited <= 1.0 + 0.5, f"slots came back after {waited:.2f}s"


async def test_a_429_seen_by_one_process_cools_the_server_for_all(
    redis_server: RedisServer, redis_api: ModuleType
) -> None:
    """Two pools (as two processes would) on one Redis: after one meets a 429 with
    Retry-After 0.5 s on server a, neither submits to a until the cooldown is over."""
    namespace = f"pool-{uuid4().hex[:8]}"
    specs = [
        FakeServerSpec(name=n, key=k, slots=4, service_time=0.01)
        for k, n in zip(KEYS, "ab", strict=True)
    ]
    async with FakeModelsLab(specs) as fake:
        fake.add_fault(Fault.rate_limit(retry_after=0.5, route="a", count=1))
        backends = [
            redis_api.RedisBackend.from_url(redis_server.url, namespace=namespace) for _ in range(2)
        ]
        clients = [
            Client(
                ServerPool(
                    [
                        Server(key=k, name=n, max_concurrency=2)
                        for k, n in zip(KEYS, "ab", strict=True)
                    ],
                    routing="round-robin",
                    backend=backend,
                ),
                base_url=fake.base_url,
                retry=RetryPolicy.no_wait(),
            )
            for backend in backends
        ]
        async with backends[0], backends[1], clients[0] as first, clients[1] as second:
            await first.img2img(make_request())  # round-robin: server a first, the 429
            cooled_at = time.monotonic()
            await asyncio.gather(
                *(c.img2img(make_request()) for c in (first, second) for _ in range(6))
            )
            while time.monotonic() < cooled_at + 0.6:
                await asyncio.sleep(0.05)
            await asyncio.gather(*(c.img2img(make_request()) for c in (first, second)))
        to_a = [r for r in fake.received if r.endpoint == "submit" and r.server == "a"]
    assert 429 == to_a[0].status
    assert not [r for r in to_a[1:] if r.at - to_a[0].at < 0.45], "a was hit while cooling"
    assert len(to_a) > 1  # and it came back after the cooldown


@pytest.mark.parametrize("mode", ["local-share", "fail"])
async def test_redis_stopped_mid_run_loses_no_job(
    spare_redis: RedisServer, redis_api: ModuleType, mode: str
) -> None:
    """Redis goes away mid-batch and comes back: with "local-share" every job still ends in a
    result; with "fail" the jobs that needed Redis end as a typed error. None is lost."""
    options: dict[str, Any] = {"on_unavailable": mode, "namespace": f"pool-{uuid4().hex[:8]}"}
    if mode == "local-share":
        options["expected_processes"] = 2
    specs = [
        FakeServerSpec(name=n, key=k, slots=4, service_time=0.02)
        for k, n in zip(KEYS, "ab", strict=True)
    ]
    async with FakeModelsLab(specs) as fake:
        backend = redis_api.RedisBackend.from_url(
            spare_redis.url, timeout=0.5, lease_ttl=3.0, **options
        )
        pool = ServerPool(
            [Server(key=k, name=n, max_concurrency=2) for k, n in zip(KEYS, "ab", strict=True)],
            routing="least-busy",
            backend=backend,
        )
        outcomes = []
        async with (
            asyncio.timeout(50),  # a hang fails here, with its traceback, not at pytest-timeout
            backend,
            Client(pool, base_url=fake.base_url, timeouts=Timeouts(job=10)) as c,
        ):
            requests = [make_request() for _ in range(40)]
            async for outcome in c.img2img_batch(requests, concurrency=4):
                outcomes.append(outcome)
                if len(outcomes) == 10:
                    spare_redis.stop()
                if len(outcomes) == 25:
                    spare_redis.start()
    assert 40 == len(outcomes) == len({o.index for o in outcomes})
    if mode == "local-share":
        assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
    else:
        failed = [o.error for o in outcomes if not o.ok]
        assert failed
        assert all(isinstance(error, ModelsLabError) for error in failed)
        assert all("Redis" in str(error) or "redis" in str(error) for error in failed)


def test_keys_never_reach_redis_from_a_pool(redis_server: RedisServer) -> None:
    """Covered with a real run by the four-process test: scan every key and value after it."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        names = list(client.scan_iter(count=1000))
        text = " ".join(n.decode(errors="replace") for n in names)
        for name in names:
            kind = client.type(name).decode()
            if kind == "string":
                text += str(client.get(name))
            elif kind == "zset":
                text += str(client.zrange(name, 0, -1))
            elif kind == "hash":
                text += str(client.hgetall(name))
    finally:
        client.close()
    assert not any(key in text for key in KEYS)
