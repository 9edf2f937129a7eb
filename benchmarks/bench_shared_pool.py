"""
One pool shared by several processes through Redis (``ServerPool(backend=RedisBackend...)``),
next to the single-process memory backend on the same servers.

Starts a throwaway ``redis-server`` (loopback, free port, no persistence) and stops it at the
end. Every process builds its own ``ServerPool`` of the same three servers (``fast``, ``mid``,
``slow``, 2 slots each, ``routing="least-busy"``) with a ``RedisBackend`` on that Redis and one
namespace per run; the memory rows run one process with the default ``MemoryBackend``.

(a) **The slot path.** 1, 2 and 4 processes (all start together at an agreed time), each for
    ``SECONDS`` per phase:

    * *1 task per process*: one task looping ``scheduler_of(pool).acquire()`` ->
      ``.give_back(lease)``; never more holders than the pool's 6 slots, so every acquire is
      granted at once: its latency is one round trip.
    * *8 tasks per process*: 8 tasks looping the same, so 8 to 32 tasks want 6 slots; an
      acquire's latency includes waiting for a slot (in line in its process, then for a
      release anywhere).
    * *whole jobs*: ``client.img2img_batch(..., concurrency=8)`` per process over a constant
      in-process transport (every POST answered with the fake's success body after one trip
      through the event loop): the pool's accounting, the job runner and the Redis calls, no
      HTTP.

    Reported: slots (or jobs) per second, all processes together; p50/p99 of ``acquire`` over
    every process; CPU per slot per process. Redis calls per slot and per job are counted
    separately, in this process (``INFO commandstats``, one task, no contention).

(b) **Makespan against the ideal.** A fresh fake (``_fakeproc.FakeProcess``, its own process)
    with ``fast`` 2 slots x 0.2 s, ``mid`` 2 x 0.4 s, ``slow`` 2 x 0.8 s, processing threshold
    0.5 s (``slow``'s jobs are answered ``processing`` and polled). ``JOBS`` jobs: 4 worker
    processes each run a quarter through ``client.img2img_batch`` (concurrency: the pool's
    capacity) on the Redis backend, next to one process running all of them on the memory
    backend. Ideal = jobs / sum(slots / service time), as in ``bench_makespan.py``; target
    <= 1.10x. The fake's own highest count of jobs outstanding at once on each server shows
    that the processes together never exceeded its slots.

Run: ``python benchmarks/bench_shared_pool.py`` (``--quick`` for a smoke run). Needs the
``[redis]`` extra and ``redis-server`` on the PATH. Writes ``results/shared_pool.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _fakeproc import REQUEST_FIELDS, FakeProcess, ServerSpec, median, table, write_result
from bench_admission import _Constant as Constant
from bench_redis import start_redis
from redis.asyncio import Redis

from modelslab_async import (
    Client,
    Img2ImgRequest,
    MemoryBackend,
    Server,
    ServerPool,
)
from modelslab_async._pool import scheduler_of
from modelslab_async.redis import RedisBackend

SERVERS = (
    ServerSpec("fast", 2, 0.2),
    ServerSpec("mid", 2, 0.4),
    ServerSpec("slow", 2, 0.8),  # slower than the threshold: answered "processing", polled
)
SLOT_KEYS = tuple(f"bench-shared-{s.name}-0001" for s in SERVERS)  # (a): the same in every process
PROCESSING_THRESHOLD = 0.5
PROCESSES = (1, 2, 4)
MAKESPAN_PROCESSES = 4
PHASES = ("1 task per process", "8 tasks per process", "whole jobs, concurrency 8")
TASKS = 8
SECONDS = 2.0
GAP = 0.5  # seconds between phases, for the stragglers of the last one
JOBS = 280
REPEATS = 3
START_DELAY = 2.5  # seconds for worker processes to import, connect and warm up
MAX_SAMPLES = 20_000  # latency samples a worker sends back (evenly spaced in sorted order)
TARGET = 1.10
MEMORY = "memory"


def pool_rate(servers: Sequence[ServerSpec]) -> float:
    """Jobs per second of the pool when every slot is busy."""
    return sum(s.slots / s.service_time for s in servers)


def make_pool(url: str, namespace: str, keys: Sequence[str]) -> tuple[ServerPool, Any]:
    """The same three servers, least-busy; on Redis at ``url``, or in memory (``"memory"``)."""
    servers = [
        Server(key=key, name=spec.name, max_concurrency=spec.slots)
        for key, spec in zip(keys, SERVERS, strict=True)
    ]
    if url == MEMORY:
        return ServerPool(servers, routing="least-busy", backend=MemoryBackend()), None
    backend = RedisBackend.from_url(url, namespace=namespace)
    return ServerPool(servers, routing="least-busy", backend=backend), backend


def summary(samples: list[float]) -> tuple[int, list[float]]:
    """Up to MAX_SAMPLES of the sorted samples, evenly spaced, and the weight of each."""
    ordered = sorted(samples)
    step = max(1, len(ordered) // MAX_SAMPLES)
    return step, ordered[::step]


def percentile(parts: Sequence[tuple[int, list[float]]], q: float) -> float:
    """The q-quantile of weighted sorted samples from several processes."""
    weighted = sorted((v, w) for w, values in parts for v in values)
    if not weighted:
        return float("nan")
    cumulative = list(itertools.accumulate(w for _, w in weighted))
    index = bisect.bisect_left(cumulative, q * cumulative[-1])
    return weighted[min(index, len(weighted) - 1)][0]


# --- (a) the slot path, in a worker process ---------------------------------------------------


async def slot_phase(pool: ServerPool, tasks: int, stop: float) -> dict[str, Any]:
    scheduler = scheduler_of(pool)
    acquire: list[float] = []
    give_back: list[float] = []
    count = 0

    async def loop() -> None:
        nonlocal count
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            lease = await scheduler.acquire()
            t1 = time.perf_counter()
            await scheduler.give_back(lease)
            t2 = time.perf_counter()
            acquire.append(t1 - t0)
            give_back.append(t2 - t1)
            count += 1

    async with asyncio.TaskGroup() as group:
        for _ in range(tasks):
            group.create_task(loop())
    return {"count": count, "acquire": summary(acquire), "give_back": summary(give_back)}


async def jobs_phase(pool: ServerPool, stop: float) -> dict[str, Any]:
    request = Img2ImgRequest(**REQUEST_FIELDS)
    jobs = (request for _ in iter(lambda: time.monotonic() < stop, False))
    count = ok = 0
    async with Client(pool, transport=Constant()) as client:
        async for outcome in client.img2img_batch(jobs, concurrency=TASKS):
            count += 1
            ok += outcome.ok
    return {"count": count, "ok": ok}


async def slot_worker(url: str, namespace: str, start_at: float, seconds: float) -> list[Any]:
    pool, backend = make_pool(url, namespace, SLOT_KEYS)
    scheduler = scheduler_of(pool)
    for _ in range(20):  # connect, load the scripts
        await scheduler.give_back(await scheduler.acquire())
    results = []
    for index, phase in enumerate(PHASES):
        begin = start_at + index * (seconds + GAP)
        await asyncio.sleep(max(0.0, begin - time.time()))
        stop = time.monotonic() + seconds
        cpu, wall = time.process_time(), time.monotonic()
        if phase.startswith("whole jobs"):
            result = await jobs_phase(pool, stop)
        else:
            result = await slot_phase(pool, 1 if phase.startswith("1 ") else TASKS, stop)
        result.update(cpu=time.process_time() - cpu, wall=time.monotonic() - wall)
        results.append(result)
    if backend is not None:
        await backend.aclose()
    return results


def slot_run(url: str, processes: int, seconds: float) -> list[dict[str, Any]]:
    """One run of every phase with ``processes`` processes; a summary per phase."""
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    start_at = time.time() + START_DELAY
    command = [sys.executable, __file__, "--slot-worker", url, namespace, repr(start_at)]
    command.append(repr(seconds))
    children = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)
    ]
    timeout = START_DELAY + len(PHASES) * (seconds + GAP) + 60
    try:
        outputs = [json.loads(child.communicate(timeout=timeout)[0]) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    phases = []
    for index, _ in enumerate(PHASES):
        parts = [output[index] for output in outputs]
        count = sum(p["count"] for p in parts)
        wall = max(p["wall"] for p in parts)
        row: dict[str, Any] = {
            "per_second": count / wall,
            "count": count,
            "cpu_us_per_op": sum(p["cpu"] for p in parts) / max(count, 1) * 1e6,
        }
        if "acquire" in parts[0]:
            acquire = [tuple(p["acquire"]) for p in parts]
            back = [tuple(p["give_back"]) for p in parts]
            row["acquire_p50_us"] = percentile(acquire, 0.5) * 1e6
            row["acquire_p99_us"] = percentile(acquire, 0.99) * 1e6
            row["give_back_p50_us"] = percentile(back, 0.5) * 1e6
            row["give_back_p99_us"] = percentile(back, 0.99) * 1e6
        else:
            row["ok"] = sum(p["ok"] for p in parts)
        phases.append(row)
    return phases


async def redis_calls(url: str, rounds: int) -> dict[str, Any]:
    """EVALSHA calls and Redis CPU per slot and per job (one task, nothing else running)."""
    client = Redis.from_url(url)
    pool, backend = make_pool(url, f"bench-{uuid.uuid4().hex[:8]}", SLOT_KEYS)
    scheduler = scheduler_of(pool)
    request = Img2ImgRequest(**REQUEST_FIELDS)

    async def counted() -> dict[str, float]:
        stats = await client.info("commandstats")
        scripts = [stats.get(c, {}) for c in ("cmdstat_evalsha", "cmdstat_eval")]
        return {
            "calls": sum(s.get("calls", 0) for s in scripts),
            "usec": sum(s.get("usec", 0) for s in scripts),
            "publish": stats.get("cmdstat_publish", {}).get("calls", 0),
        }

    result: dict[str, Any] = {}
    async with Client(pool, transport=Constant()) as job_client:
        for _ in range(20):
            await scheduler.give_back(await scheduler.acquire())
            await job_client.img2img(request)
        await client.config_resetstat()
        for _ in range(rounds):
            await scheduler.give_back(await scheduler.acquire())
        slot = await counted()
        await client.config_resetstat()
        async for _ in job_client.img2img_batch(itertools.repeat(request, rounds), concurrency=1):
            pass
        job = await counted()
    for name, stats in (("slot", slot), ("job", job)):
        result[name] = {
            "evalsha_per_op": stats["calls"] / rounds,
            "redis_us_per_op": stats["usec"] / rounds,
            "publish_per_op": stats["publish"] / rounds,
        }
    await backend.aclose()
    await client.aclose()
    return result


# --- (b) makespan, in worker processes ------------------------------------------------------


async def makespan_worker(
    base_url: str, url: str, namespace: str, jobs: int, start_at: float
) -> dict[str, Any]:
    keys = os.environ["MODELSLAB_API_KEYS"].split(",")
    pool, backend = make_pool(url, namespace, keys)
    request = Img2ImgRequest(**REQUEST_FIELDS)
    ok = failed = duplicates = 0
    async with Client(pool, base_url=base_url) as client:
        await pool.shared_states()  # connect before the start
        await asyncio.sleep(max(0.0, start_at - time.time()))
        started = time.time()
        async for outcome in client.img2img_batch(itertools.repeat(request, jobs)):
            ok += outcome.ok
            failed += not outcome.ok
            duplicates += outcome.possible_duplicate
        ended = time.time()
    if backend is not None:
        await backend.aclose()
    return {
        "ok": ok,
        "failed": failed,
        "duplicates": duplicates,
        "started": started,
        "ended": ended,
    }


def makespan_run(url: str, processes: int, jobs: int, seed: int) -> dict[str, Any]:
    """A fresh fake; ``jobs`` split over ``processes`` workers; makespan from the agreed start."""
    with FakeProcess(SERVERS, processing_threshold=PROCESSING_THRESHOLD, seed=seed) as fake:
        namespace = f"bench-{uuid.uuid4().hex[:8]}"
        start_at = time.time() + START_DELAY
        shares = [jobs // processes + (n < jobs % processes) for n in range(processes)]
        env = {**os.environ, "MODELSLAB_API_KEYS": ",".join(fake.keys)}
        children = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--makespan-worker",
                    fake.base_url,
                    url,
                    namespace,
                    str(share),
                    repr(start_at),
                ],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for share in shares
        ]
        try:
            outputs = [json.loads(child.communicate(timeout=600)[0]) for child in children]
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
        servers = fake.stats()["servers"]
    return {
        "makespan": max(o["ended"] for o in outputs) - start_at,
        "late_start": max(o["started"] for o in outputs) - start_at,
        "ok": sum(o["ok"] for o in outputs),
        "failed": sum(o["failed"] for o in outputs),
        "possible_duplicates": sum(o["duplicates"] for o in outputs),
        "accepted": {s["name"]: s["accepted"] for s in servers},
        "peak_outstanding": {s["name"]: s["max_outstanding"] for s in servers},
        "slots": {s["name"]: s["slots"] for s in servers},
    }


# --- the run ----------------------------------------------------------------------------------


def runs_text(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    return f"{fmt.format(median(values))} (" + " / ".join(fmt.format(v) for v in values) + ")"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (~1 min)")
    parser.add_argument("--slot-worker", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--makespan-worker", nargs=5, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.slot_worker:
        url, namespace, start_at, seconds = options.slot_worker
        print(json.dumps(asyncio.run(slot_worker(url, namespace, float(start_at), float(seconds)))))
        return
    if options.makespan_worker:
        base_url, url, namespace, jobs, start_at = options.makespan_worker
        result = asyncio.run(makespan_worker(base_url, url, namespace, int(jobs), float(start_at)))
        print(json.dumps(result))
        return

    seconds = 0.5 if options.quick else SECONDS
    repeats = 1 if options.quick else REPEATS
    jobs = 60 if options.quick else JOBS
    rounds = 200 if options.quick else 2000
    contenders = [(MEMORY, 1), *(("redis", p) for p in PROCESSES)]
    names = {(MEMORY, 1): "memory, 1 process", **{("redis", p): f"Redis, {p}" for p in PROCESSES}}
    spans = [(MEMORY, 1), ("redis", MAKESPAN_PROCESSES)]
    slots: dict[tuple[str, int], list[list[dict[str, Any]]]] = {c: [] for c in contenders}
    made: dict[tuple[str, int], list[dict[str, Any]]] = {c: [] for c in spans}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-shared-") as directory:
        server, url = start_redis(Path(directory))
        try:
            calls = asyncio.run(redis_calls(url, rounds))
            for repeat in range(repeats):  # interleaved: a disturbance hits every row alike
                for kind, processes in contenders:
                    print(
                        f"  slot path: {names[kind, processes]}, run {repeat + 1}", file=sys.stderr
                    )
                    where = url if kind == "redis" else MEMORY
                    slots[kind, processes].append(slot_run(where, processes, seconds))
                for kind, processes in spans:
                    print(f"  makespan: {kind} x{processes}, run {repeat + 1}", file=sys.stderr)
                    where = url if kind == "redis" else MEMORY
                    made[kind, processes].append(makespan_run(where, processes, jobs, repeat))
        finally:
            server.terminate()
            server.wait(timeout=10)
    load_end = os.getloadavg()

    print(f"\n(a) The slot path: 3 servers x 2 slots, least-busy, {seconds:g} s per phase, "
          f"median of {repeats} run(s) (the runs in brackets); load {load_start[0]:.2f} -> "
          f"{load_end[0]:.2f}\n")  # fmt: skip
    slot_rows = []
    for index, phase in enumerate(PHASES):
        for contender in contenders:
            runs = [run[index] for run in slots[contender]]
            unit = "jobs/s" if phase.startswith("whole") else "slots/s"
            row = [
                phase,
                names[contender],
                runs_text([r["per_second"] for r in runs]) + f" {unit}",
            ]
            if "acquire_p50_us" in runs[0]:
                row += [
                    f"{median([r['acquire_p50_us'] for r in runs]):,.1f}",
                    f"{median([r['acquire_p99_us'] for r in runs]):,.1f}",
                    f"{median([r['give_back_p50_us'] for r in runs]):,.1f}",
                ]
            else:
                row += ["", "", ""]
            row.append(f"{median([r['cpu_us_per_op'] for r in runs]):,.1f}")
            slot_rows.append(row)
    print(
        table(
            ["phase", "backend, processes", "throughput, all processes", "acquire p50 µs",
             "acquire p99 µs", "give_back p50 µs", "CPU µs per slot/job, per process"],
            slot_rows,
        )
    )  # fmt: skip
    print(
        f"\nRedis calls (one task, {rounds} rounds): per slot "
        f"{calls['slot']['evalsha_per_op']:.2f} EVALSHA, {calls['slot']['publish_per_op']:.2f} "
        f"PUBLISH, {calls['slot']['redis_us_per_op']:.1f} µs of Redis time; per job "
        f"{calls['job']['evalsha_per_op']:.2f} EVALSHA, {calls['job']['publish_per_op']:.2f} "
        f"PUBLISH, {calls['job']['redis_us_per_op']:.1f} µs of Redis time"
    )

    ideal = jobs / pool_rate(SERVERS)
    shape = ", ".join(f"{s.name} {s.slots}x{s.service_time:g}s" for s in SERVERS)
    print(f"\n(b) Makespan: {jobs} jobs on {shape} (pool {pool_rate(SERVERS):.1f} jobs/s), "
          f"ideal {ideal:.2f} s, median of {repeats} run(s)\n")  # fmt: skip
    span_rows = []
    summary_spans: dict[str, Any] = {}
    for kind, processes in spans:
        runs = made[kind, processes]
        values = [r["makespan"] for r in runs]
        ratio = median(values) / ideal
        peak = {name: max(r["peak_outstanding"][name] for r in runs) for name in runs[0]["slots"]}
        middle = sorted(runs, key=lambda r: r["makespan"])[len(runs) // 2]
        span_rows.append(
            [
                f"{'Redis' if kind == 'redis' else 'memory'}, {processes} process"
                + ("es" if processes > 1 else ""),
                f"{min(r['ok'] for r in runs)}/{jobs} ({max(r['failed'] for r in runs)} failed)",
                runs_text(values, "{:.2f}"),
                f"{ideal:.2f}",
                f"**{ratio:.3f}x**",
                " / ".join(str(peak[n]) for n in peak),
                " / ".join(str(middle["accepted"][n]) for n in peak),
                f"<= {TARGET:.2f}x: {'met' if ratio <= TARGET else 'missed'}",
            ]
        )
        summary_spans[f"{kind} x{processes}"] = {
            "makespans": values,
            "makespan": median(values),
            "ratio": ratio,
            "peak_outstanding": peak,
            "runs": runs,
        }
    print(
        table(
            ["backend", "ok", "makespan s, median (runs)", "ideal s", "vs ideal",
             "most jobs at once on fast / mid / slow (the fake's count; 2 slots each)",
             "jobs per server, median run", "target"],
            span_rows,
        )
    )  # fmt: skip
    write_result(
        "shared_pool",
        {
            "loadavg_when_started": [round(x, 2) for x in load_start],
            "loadavg_at_end": [round(x, 2) for x in load_end],
            "servers": [
                {"name": s.name, "slots": s.slots, "service_time": s.service_time} for s in SERVERS
            ],
            "slot_path": {
                "seconds": seconds,
                "tasks": TASKS,
                "phases": list(PHASES),
                "runs": {names[c]: slots[c] for c in contenders},
            },
            "redis_calls": calls,
            "makespan": {
                "jobs": jobs,
                "ideal": ideal,
                "target": TARGET,
                "processing_threshold": PROCESSING_THRESHOLD,
                "contenders": summary_spans,
            },
        },
    )


if __name__ == "__main__":
    main()
