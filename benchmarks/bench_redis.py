"""
The Redis backend: what one shared slot costs, and how many slots per second several processes
can take through one Redis.

Starts a throwaway ``redis-server`` (no persistence, a free loopback port, a temporary
directory) and stops it at the end. Two measurements:

* **Latency.** One process, one task, one server with room: ``acquire`` then ``release``,
  ``LATENCY_ROUNDS`` times after a warm-up; p50/p99 of each call (each is one EVALSHA round
  trip), next to a bare ``PING`` (the round-trip floor) and to an ``asyncio.Semaphore``
  acquire+release (what a slot costs inside one process). Redis's own time per script call
  comes from ``INFO commandstats``.
* **Throughput.** 1, 2 and 4 processes, ``TASKS`` tasks each, every task looping acquire ->
  release for ``SECONDS`` (all processes start together at an agreed time). *uncontended*:
  two servers with room for every task (each acquire is granted); *2x2 slots*: two servers of
  2 slots each, so most acquires are refused and wait for a release wake-up, either with one
  waiter per process (the tasks queue on a local FIFO lock, as the pool queues its jobs) or
  with every task waiting on Redis (a thundering herd: each release wakes them all). The
  figure is slots granted per second, all processes together.

Run: ``python benchmarks/bench_redis.py`` (``--quick`` for a smaller run). Needs the
``[redis]`` extra and ``redis-server`` on the PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from _fakeproc import median, table, write_result
from redis.asyncio import Redis

from modelslab_async._backend import SlotSpec
from modelslab_async.redis import RedisBackend

LATENCY_ROUNDS = 5000
WARMUP = 500
TASKS = 8
SECONDS = 3.0
PROCESSES = (1, 2, 4)
REPEATS = 3
MODES = (  # name, capacity of each of the two servers, one Redis waiter per process
    ("uncontended", 4 * TASKS, False),
    ("2x2 slots, one waiter per process", 2, True),
    ("2x2 slots, every task waits", 2, False),
)
START_DELAY = 2.0  # seconds for the worker processes to import and connect before the start


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server on a free loopback port, answering PING."""
    executable = shutil.which("redis-server")
    if executable is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory), "--logfile", ""],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.01)
    process.kill()
    sys.exit("redis-server did not start")


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 of samples in seconds, in microseconds."""
    ordered = sorted(samples)
    return (
        ordered[len(ordered) // 2] * 1e6,
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6,
    )


async def latency(url: str, rounds: int) -> dict[str, Any]:
    """Uncontended acquire / release / ping / semaphore latencies, one task."""
    spec = SlotSpec("gpu-a:key-000000", capacity=1000)
    acquire, release, both, ping, semaphore = [], [], [], [], []
    client = Redis.from_url(url)
    await client.config_resetstat()
    async with RedisBackend.from_url(url, namespace=f"bench-{uuid.uuid4().hex[:6]}") as backend:
        for n in range(rounds + WARMUP):
            holder = f"job-{n}"
            t0 = time.perf_counter()
            await backend.acquire([spec], holder=holder)
            t1 = time.perf_counter()
            await backend.release(spec.server, holder)
            t2 = time.perf_counter()
            if n >= WARMUP:
                acquire.append(t1 - t0)
                release.append(t2 - t1)
                both.append(t2 - t0)
    for n in range(rounds + WARMUP):
        t0 = time.perf_counter()
        await client.ping()
        if n >= WARMUP:
            ping.append(time.perf_counter() - t0)
    lock = asyncio.Semaphore(1000)
    for n in range(rounds + WARMUP):
        t0 = time.perf_counter()
        await lock.acquire()
        lock.release()
        if n >= WARMUP:
            semaphore.append(time.perf_counter() - t0)
    stats = await client.info("commandstats")
    version = (await client.info("server"))["redis_version"]
    await client.aclose()
    evalsha = stats.get("cmdstat_evalsha", {})
    return {
        "rounds": rounds,
        "redis_server": version,
        "redis_py": redis.__version__,
        "acquire_us": percentiles(acquire),
        "release_us": percentiles(release),
        "acquire_release_us": percentiles(both),
        "ping_us": percentiles(ping),
        "semaphore_us": percentiles(semaphore),
        "redis_us_per_evalsha": evalsha.get("usec_per_call"),
    }


async def worker(
    url: str, namespace: str, capacity: int, *, head_only: bool, start_at: float, seconds: float
) -> int:
    """
    One process of the throughput run: TASKS tasks looping acquire -> release. With
    ``head_only`` the tasks queue on a local FIFO lock and only its holder acquires and waits
    on Redis (the pool's way: one cross-process waiter per process); without, every task does.
    """
    specs = [SlotSpec("gpu-a:key-aaaaaa", capacity), SlotSpec("gpu-b:key-bbbbbb", capacity)]
    granted = 0
    head = asyncio.Lock()
    async with RedisBackend.from_url(url, namespace=namespace) as backend:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        stop = time.monotonic() + seconds

        async def take(holder: str) -> Any:
            while time.monotonic() < stop:
                grant = await backend.acquire(specs, holder=holder)
                if grant is not None:
                    return grant
                await backend.wait_for_release(0.05)
            return None

        async def task() -> None:
            nonlocal granted
            while time.monotonic() < stop:
                holder = uuid.uuid4().hex
                if head_only:
                    async with head:
                        grant = await take(holder)
                else:
                    grant = await take(holder)
                if grant is None:
                    return
                granted += 1
                await backend.release(grant.server, holder)

        async with asyncio.TaskGroup() as group:
            for _ in range(TASKS):
                group.create_task(task())
    return granted


def throughput(url: str, processes: int, capacity: int, head_only: bool, seconds: float) -> float:
    """Slots granted per second by ``processes`` processes together."""
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    start_at = time.time() + START_DELAY
    args = [url, namespace, str(capacity), str(int(head_only)), repr(start_at), repr(seconds)]
    command = [sys.executable, __file__, "--worker", *args]
    children = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)
    ]
    try:
        counts = [
            int(child.communicate(timeout=START_DELAY + seconds + 60)[0]) for child in children
        ]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    return sum(counts) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        url, namespace, capacity, head_only, start_at, seconds = options.worker
        count = asyncio.run(
            worker(
                url,
                namespace,
                int(capacity),
                head_only=head_only == "1",
                start_at=float(start_at),
                seconds=float(seconds),
            )
        )
        print(count)
        return
    rounds = 1000 if options.quick else LATENCY_ROUNDS
    seconds = 1.0 if options.quick else SECONDS
    repeats = 1 if options.quick else REPEATS
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as directory:
        server, url = start_redis(Path(directory))
        try:
            lat = asyncio.run(latency(url, rounds))
            runs: dict[str, dict[int, list[float]]] = {name: {} for name, _, _ in MODES}
            for _ in range(repeats):  # interleaved, so a disturbance hits every row alike
                for processes in PROCESSES:
                    for name, capacity, head_only in MODES:
                        rate = throughput(url, processes, capacity, head_only, seconds)
                        runs[name].setdefault(processes, []).append(rate)
        finally:
            server.terminate()
            server.wait(timeout=10)
    rows = [
        [name, f"{lat[key][0]:.0f}", f"{lat[key][1]:.0f}"]
        for name, key in (
            ("acquire (EVALSHA)", "acquire_us"),
            ("release (EVALSHA + PUBLISH)", "release_us"),
            ("acquire + release", "acquire_release_us"),
            ("PING (round-trip floor)", "ping_us"),
            ("asyncio.Semaphore acquire + release (in process)", "semaphore_us"),
        )
    ]
    print(f"Latency, one task, {rounds} rounds; Redis time per script call: "
          f"{lat['redis_us_per_evalsha']} µs")  # fmt: skip
    print(table(["call", "p50 µs", "p99 µs"], rows))
    rows = [
        [processes, *(
            f"{median(runs[name][processes]):,.0f} ("
            + " / ".join(f"{r:,.0f}" for r in runs[name][processes]) + ")"
            for name, _, _ in MODES
        )]
        for processes in PROCESSES
    ]  # fmt: skip
    print(f"\nSlots granted per second, {TASKS} tasks per process, {seconds:g} s, median (runs)")
    print(table(["processes", *(name for name, _, _ in MODES)], rows))
    write_result(
        "redis",
        {
            "latency": lat,
            "throughput": {name: {str(p): v for p, v in by.items()} for name, by in runs.items()},
            "tasks_per_process": TASKS,
            "seconds": seconds,
            "spread": {
                name: {str(p): statistics.pstdev(v) for p, v in by.items()}
                for name, by in runs.items()
            },
        },
    )


if __name__ == "__main__":
    main()
