"""Several OS processes sharing servers through one Redis: capacity holds, dead holders' slots
come back within the lease time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import uuid4

from modelslab_async._backend import SlotSpec

from ._redis_server import MakeBackend, RedisServer

ROOT = Path(__file__).resolve().parents[1]

# One process: TASKS tasks, each taking a slot CYCLES times on any of the servers (first fit,
# waiting for a release when all are full), holding it a few milliseconds. Around each hold an
# independent gauge per server (INCR/DECR, atomic in Redis) records how many holders were inside
# at once; the process prints the highest value it saw per server.
HAMMER = """
import asyncio, json, random, sys, uuid
from redis.asyncio import Redis
from modelslab_async._backend import SlotSpec
from modelslab_async.redis import RedisBackend

url, namespace, tasks, cycles = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
specs = [SlotSpec(name, capacity=2) for name in ("gpu-a:key-aaaaaa", "gpu-b:key-bbbbbb")]


async def main() -> None:
    gauge = Redis.from_url(url)
    peaks = {spec.server: 0 for spec in specs}
    async with RedisBackend.from_url(url, namespace=namespace, lease_ttl=5.0) as backend:

        async def task() -> None:
            for _ in range(cycles):
                holder = uuid.uuid4().hex
                while (grant := await backend.acquire(specs, holder=holder)) is None:
                    await backend.wait_for_release(0.5)
                key = f"gauge:{namespace}:{grant.server}"
                inside = await gauge.incr(key)
                peaks[grant.server] = max(peaks[grant.server], inside)
                await asyncio.sleep(random.uniform(0.001, 0.004))
                await gauge.decr(key)
                await backend.release(grant.server, holder)

        async with asyncio.TaskGroup() as group:
            for _ in range(tasks):
                group.create_task(task())
    await gauge.aclose()
    print(json.dumps(peaks))


asyncio.run(main())
"""

# Takes every slot of one server, says so, then waits to be killed (renewing its leases).
HOLDER = """
import asyncio, sys
from modelslab_async._backend import SlotSpec
from modelslab_async.redis import RedisBackend

url, namespace, lease_ttl = sys.argv[1], sys.argv[2], float(sys.argv[3])


async def main() -> None:
    backend = RedisBackend.from_url(url, namespace=namespace, lease_ttl=lease_ttl)
    spec = SlotSpec("gpu-a:key-aaaaaa", capacity=2)
    for n in range(2):
        assert await backend.acquire([spec], holder=f"doomed-{n}") is not None
    print("HOLDING", flush=True)
    await asyncio.sleep(60)


asyncio.run(main())
"""


@contextlib.contextmanager
def processes(*commands: list[str]) -> Iterator[list[subprocess.Popen[str]]]:
    """Start the commands; whatever happens, none outlives the block."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started: list[subprocess.Popen[str]] = []
    try:
        for command in commands:
            started.append(
                subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.communicate()


def test_four_processes_never_exceed_capacity(redis_server: RedisServer) -> None:
    """4 processes x 6 tasks x 15 jobs on two 2-slot servers: at most 2 inside each, ever."""
    namespace = f"procs-{uuid4().hex[:8]}"
    command = [sys.executable, "-c", HAMMER, redis_server.url, namespace, "6", "15"]
    with processes(*[command] * 4) as started:
        outputs = [process.communicate(timeout=60) for process in started]
    assert [0, 0, 0, 0] == [process.returncode for process in started], outputs
    peaks: dict[str, int] = {}
    for stdout, _ in outputs:
        for server, peak in json.loads(stdout).items():
            peaks[server] = max(peaks.get(server, 0), peak)
    assert {"gpu-a:key-aaaaaa": 2, "gpu-b:key-bbbbbb": 2} == peaks


async def test_a_killed_holders_slots_come_back_within_the_lease(
    redis_server: RedisServer, make_backend: MakeBackend, redis_api: ModuleType
) -> None:
    """SIGKILL a process holding both slots of a server: another gets them after about lease_ttl
    (its last renewal plus the lease), never before the lease runs out."""
    lease_ttl = 0.6
    namespace = f"kill-{uuid4().hex[:8]}"
    spec = SlotSpec("gpu-a:key-aaaaaa", capacity=2)
    survivor = make_backend(namespace=namespace, lease_ttl=lease_ttl, poll_interval=0.02)
    command = [sys.executable, "-c", HOLDER, redis_server.url, namespace, str(lease_ttl)]
    with processes(command) as (doomed,):
        assert doomed.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(doomed.stdout.readline), 30)
        assert "HOLDING\n" == line
        await asyncio.sleep(lease_ttl)  # renewals keep the slots past one lease
        assert await survivor.acquire([spec], holder="survivor-0") is None
        doomed.send_signal(signal.SIGKILL)
        killed = time.perf_counter()
        got: list[Any] = []
        while len(got) < 2 and time.perf_counter() - killed < 3 * lease_ttl:
            grant = await survivor.acquire([spec], holder=f"survivor-{len(got) + 1}")
            if grant is not None:
                got.append(grant)
            else:
                await survivor.wait_for_release(0.02)
        waited = time.perf_counter() - killed
    assert 2 == len(got)
    # the last renewal happened at most lease_ttl / 3 before the kill
    assert lease_ttl * 2 / 3 - 0.05 <= waited <= lease_ttl + 0.15, waited
