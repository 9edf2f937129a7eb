"""
A batch over many worker processes (``modelslab-async worker``), through one Redis.

1. **Makespan vs ideal** with 1, 2 and 4 worker processes on two heterogeneous pools, those
   of ``bench_makespan.py`` and ``bench_shared_pool.py`` (the fake in its own process). The
   workers start idle, then the manifest is enqueued; the makespan runs from the enqueue
   until every job is final (polled in Redis). Ideal = jobs / sum(slots / service time).
   Target: <= 1.10x.
2. **Redis memory per finished job**: ``MEMORY USAGE`` of finished jobs' hashes, and
   ``INFO memory`` before the enqueue and after the batch (hashes, id lists, stream, stats).
3. **Worker RSS while streaming N queued jobs** through a cheap in-process transport (every
   submit answered ``success`` at once, no downloads): one worker process, its RSS sampled
   as it goes. 1,000,000 jobs by default (``--quick``: 20,000; ``--stream N``).

Run: ``python benchmarks/bench_workers.py`` (``--quick``: fewer jobs; ``--stream N``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import redis
from _fakeproc import REQUEST_FIELDS, FakeProcess, ServerSpec, table, write_result
from bench_redis import start_redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
POOLS = {  # two heterogeneous pools: bench_makespan.py's and bench_shared_pool.py's
    "short jobs (0.1-0.6 s)": (
        ServerSpec("server-1", 4, 0.2),
        ServerSpec("server-2", 2, 0.1),
        ServerSpec("server-3", 1, 0.6),  # slower than the threshold: answered "processing"
    ),
    "longer jobs (0.2-0.8 s)": (
        ServerSpec("fast", 2, 0.2),
        ServerSpec("mid", 2, 0.4),
        ServerSpec("slow", 2, 0.8),
    ),
}
PROCESSING_THRESHOLD = 0.5
TARGET = 1.10

# One worker streaming jobs through MockTransport; prints its RSS every STEP jobs.
STREAMER = """
import asyncio, json, resource, sys, time
from modelslab_async import Client, Server, ServerPool
from modelslab_async.redis import Batch, LedgerTransport, Worker
from modelslab_async.testing import MockTransport, json_response

url, name, step = sys.argv[1], sys.argv[2], int(sys.argv[3])

def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0

def answer(request):
    return json_response({"status": "success", "id": "1", "output": ["https://cdn.example/o.png"]})

async def main():
    async with Batch.from_url(url, name) as batch:
        pool = ServerPool([Server(key="bench-key-000001", name="gpu", max_concurrency=64)])
        transport = LedgerTransport(MockTransport(answer, record=False))
        async with Client(pool, base_url="http://fake.invalid", transport=transport) as client:
            worker = Worker(batch, client, concurrency=64)
            started = time.monotonic()
            async def sample():
                while True:
                    done = worker.report.succeeded + worker.report.failed
                    print(json.dumps({"t": round(time.monotonic() - started, 2), "done": done,
                                      "rss_mb": round(rss_mb(), 1)}), flush=True)
                    await asyncio.sleep(2.0)
            async with asyncio.TaskGroup() as group:
                sampler = group.create_task(sample())
                await worker.run()
                sampler.cancel()
            print(json.dumps({"t": round(time.monotonic() - started, 2),
                              "done": worker.report.succeeded, "failed": worker.report.failed,
                              "rss_mb": round(rss_mb(), 1),
                              "final": True}), flush=True)

asyncio.run(main())
"""


def pool_rate(servers: tuple[ServerSpec, ...]) -> float:
    return sum(s.slots / s.service_time for s in servers)


def manifest(path: Path, jobs: int) -> Path:
    with path.open("w") as stream:
        for n in range(jobs):
            stream.write(json.dumps({"id": f"job-{n}", **REQUEST_FIELDS}) + "\n")
    return path


def cli(*args: str, env: dict[str, str], **popen: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "modelslab_async", *args], env=env, cwd=ROOT, **popen
    )


def makespan(url: str, fake: FakeProcess, workers: int, jobs: int, work: Path) -> dict[str, Any]:
    servers = tuple(fake.servers)
    """Start ``workers`` idle workers, enqueue, wait until every job is final."""
    name = f"bench-{uuid4().hex[:8]}"
    config = work / "servers.toml"
    config.write_text(
        'routing = "least-busy"\n'
        + "".join(
            f'[[servers]]\nname = "{s.name}"\nkey_env = "KEY_{n}"\nmax_concurrency = {s.slots}\n'
            for n, s in enumerate(servers)
        )
    )
    env = {**os.environ, "MODELSLAB_BASE_URL": fake.base_url, "MODELSLAB_REDIS_URL": url}
    env |= {f"KEY_{n}": key for n, key in enumerate(fake.keys)}
    env["PYTHONPATH"] = str(ROOT)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [
        cli("worker", "--batch", name, "--config", str(config), env=env, **quiet)
        for _ in range(workers)
    ]
    client = redis.Redis.from_url(url, decode_responses=True)
    tag = "{modelslab:b:" + name + "}"
    try:
        while client.zcard(f"{tag}:beats") < workers:  # every worker is up and idle
            time.sleep(0.05)
        path = manifest(work / f"{name}.jsonl", jobs)
        started = time.monotonic()
        asyncio.run(enqueue(url, name, path))  # in this process: no interpreter start timed
        while True:
            counts = client.hgetall(f"{tag}:counts")
            if int(counts.get("succeeded", 0)) + int(counts.get("failed", 0)) >= jobs:
                break
            time.sleep(0.02)
        took = time.monotonic() - started
        codes = [p.wait(timeout=30) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    ideal = jobs / pool_rate(servers)
    return {
        "workers": workers,
        "jobs": jobs,
        "makespan": round(took, 3),
        "ideal": round(ideal, 3),
        "ratio": round(took / ideal, 3),
        "failed": int(counts.get("failed", 0)),
        "exit_codes": codes,
        "batch": name,
    }


async def enqueue(url: str, name: str, path: Path) -> None:
    from modelslab_async.redis import Batch  # noqa: PLC0415
    from modelslab_async.redis import enqueue as add  # noqa: PLC0415

    async with Batch.from_url(url, name) as batch:
        await add(batch, path)


def redis_memory(url: str, batch: str, jobs: int, before: int) -> dict[str, Any]:
    """Bytes Redis holds per finished job (hash alone, and everything the batch holds)."""
    client = redis.Redis.from_url(url, decode_responses=True)
    tag = "{modelslab:b:" + batch + "}"
    sample = [f"{tag}:j:job-{n}" for n in range(0, jobs, max(1, jobs // 50))]
    per_hash = sum(client.memory_usage(key) or 0 for key in sample) / len(sample)
    lists = sum(client.memory_usage(f"{tag}:{part}") or 0 for part in ("ids", "fin", "stream"))
    after = int(client.info("memory")["used_memory"])
    return {
        "hash_bytes": round(per_hash),
        "lists_and_stream_bytes_per_job": round(lists / jobs, 1),
        "used_memory_per_job": round((after - before) / jobs),
        "stream_length": client.xlen(f"{tag}:stream"),
    }


def stream_rss(url: str, jobs: int, work: Path) -> dict[str, Any]:
    """Enqueue ``jobs`` jobs and stream them through one worker; its RSS over time."""
    name = f"stream-{uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MODELSLAB_REDIS_URL": url}
    path = manifest(work / "stream.jsonl", jobs)
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "modelslab_async", "enqueue", str(path), "--batch", name],
        env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    enqueue_s = time.monotonic() - started
    path.unlink()
    step = max(1000, jobs // 50)
    process = subprocess.run(
        [sys.executable, "-c", STREAMER, url, name, str(step)],
        env=env, cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    samples = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    final = samples[-1]
    steady = [s["rss_mb"] for s in samples if s["done"] >= jobs * 0.1]
    return {
        "jobs": jobs,
        "enqueue_s": round(enqueue_s, 1),
        "enqueue_jobs_per_s": round(jobs / enqueue_s),
        "worker_s": final["t"],
        "worker_jobs_per_s": round(jobs / final["t"]),
        "succeeded": final["done"],
        "failed": final.get("failed"),
        "rss_mb_at_10pct": steady[0] if steady else None,
        "rss_mb_max": max(s["rss_mb"] for s in samples),
        "rss_mb_final": final["rss_mb"],
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer jobs")
    parser.add_argument("--jobs", type=int, help="jobs per makespan run (default 600)")
    parser.add_argument("--stream", type=int, help="jobs streamed for the RSS run")
    args = parser.parse_args()
    jobs = args.jobs or (200 if args.quick else 600)
    streamed = args.stream or (20_000 if args.quick else 1_000_000)
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        work = Path(tmp)
        server, url = start_redis(work)
        try:
            rows, runs = [], []
            for pool, servers in POOLS.items():
                with FakeProcess(servers, processing_threshold=PROCESSING_THRESHOLD) as fake:
                    for count in (1, 2, 4):
                        before = int(redis.Redis.from_url(url).info("memory")["used_memory"])
                        run = makespan(url, fake, count, jobs, work)
                        run["memory"] = redis_memory(url, run["batch"], jobs, before)
                        run["pool"] = pool
                        runs.append(run)
                        rows.append(
                            (pool, count, jobs, run["makespan"], run["ideal"], run["ratio"])
                        )
                        print(json.dumps(run), flush=True)
            streaming = stream_rss(url, streamed, work)
            print(json.dumps({k: v for k, v in streaming.items() if k != "samples"}))
        finally:
            server.terminate()
            server.wait()
    print(table(("pool", "workers", "jobs", "makespan s", "ideal s", "ratio"), rows))
    memory = runs[-1]["memory"]
    print(table(("per finished job", "bytes"), [(k, v) for k, v in memory.items()]))
    write_result(
        "workers",
        {"target": TARGET, "makespan": runs, "memory": memory, "streaming": streaming},
    )


if __name__ == "__main__":
    main()
