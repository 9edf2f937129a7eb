"""
Figures 5 and 6: what admission and routing cost, with the HTTP taken out.

5. CPU per job with 500, 4,000 and 10,000 callers awaiting ``client.img2img`` at once on a pool
   of capacity 8, next to the same callers on a plain ``asyncio.Semaphore(8)`` doing the same
   (one await for the answer, ``json.loads`` of the same body). Target: 10,000 callers within
   1.3x of 500 (the old wake-all line was quadratic: 0.34 ms at 500, 5.3 ms at 4,000).
6. CPU per job of a batch (``img2img_batch``, concurrency 8) over 1, 10, 100 and 1,000 servers,
   every routing mode. Target: 100 servers within 1.2x of one.

Both run in this process against a constant in-process answer (the fake's real success body),
so the CPU measured is the client's alone. Run: ``python benchmarks/bench_admission.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _fakeproc import REQUEST_FIELDS, table, write_result

from modelslab_async import Client, Img2ImgRequest, RawResponse, Server, ServerPool

ANSWER = RawResponse(
    200,
    {},
    json.dumps(
        {
            "status": "success",
            "generationTime": 1.2,
            "id": 1,
            "output": ["https://cdn.example/1.png"],
            "proxy_links": ["https://cdn.example/1.png"],
            "meta": {"prompt": "a watercolor fox", "seed": 4, "W": 512, "H": 512},
        }
    ).encode(),
)


class _Constant:
    """Answers every POST with the same bytes after one trip through the event loop."""

    async def post_json(self, url: str, body: Any, *, timeout: float, server: str) -> RawResponse:
        await asyncio.sleep(0)
        return ANSWER

    async def get(self, url: str, *, timeout: float) -> RawResponse:
        return ANSWER

    async def aclose(self) -> None:
        return None


def cpu_per_job(run: Callable[[], Awaitable[int]]) -> float:
    """Microseconds of process CPU per job for one run."""
    gc.collect()
    started = time.process_time()
    jobs = asyncio.run(run())
    return (time.process_time() - started) / jobs * 1e6


def callers_ours(callers: int, capacity: int) -> Callable[[], Awaitable[int]]:
    async def run() -> int:
        request = Img2ImgRequest(**REQUEST_FIELDS)
        pool = ServerPool([Server(key="bench-key-0001", max_concurrency=capacity)])
        async with Client(pool, transport=_Constant()) as client:
            results = await asyncio.gather(*(client.img2img(request) for _ in range(callers)))
        return len(results)

    return run


def callers_semaphore(callers: int, capacity: int) -> Callable[[], Awaitable[int]]:
    async def run() -> int:
        semaphore = asyncio.Semaphore(capacity)
        transport = _Constant()

        async def one() -> bool:
            async with semaphore:
                answer = await transport.post_json("", {}, timeout=1, server="")
            return bool(json.loads(answer.body)["output"])

        results = await asyncio.gather(*(one() for _ in range(callers)))
        return len(results)

    return run


def batch_over(servers: int, routing: str, jobs: int) -> Callable[[], Awaitable[int]]:
    async def run() -> int:
        request = Img2ImgRequest(**REQUEST_FIELDS)
        pool = ServerPool(
            [
                Server(key=f"bench-key-{n:05d}", name=f"s{n}", max_concurrency=8)
                for n in range(servers)
            ],
            routing=routing,  # type: ignore[arg-type]
        )
        count = 0
        async with Client(pool, transport=_Constant()) as client:
            async for _ in client.img2img_batch(itertools.repeat(request, jobs), concurrency=8):
                count += 1
        return count

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true", help="one run each, fewer jobs")
    args = parser.parse_args()
    repeats = 1 if args.quick else 5  # best of N: CPU time only grows with disturbance
    capacity = 8

    callers_rows: list[dict[str, Any]] = []
    for callers in (500, 4000, 10_000):
        ours = [cpu_per_job(callers_ours(callers, capacity)) for _ in range(repeats)]
        plain = [cpu_per_job(callers_semaphore(callers, capacity)) for _ in range(repeats)]
        callers_rows.append(
            {
                "callers": callers,
                "ours_us": min(ours),
                "semaphore_us": min(plain),
                "ours_runs": ours,
                "semaphore_runs": plain,
            }
        )
    base = callers_rows[0]["ours_us"]
    print(
        table(
            ["callers", "modelslab-async µs/job", "asyncio.Semaphore µs/job", "vs 500 callers"],
            [
                [
                    r["callers"],
                    f"{r['ours_us']:.1f}",
                    f"{r['semaphore_us']:.1f}",
                    f"{r['ours_us'] / base:.2f}x",
                ]
                for r in callers_rows
            ],
        )
    )

    jobs = 2000 if args.quick else 10_000
    routing_rows: list[dict[str, Any]] = []
    for routing in ("least-busy", "round-robin", "first-server"):
        for servers in (1, 10, 100, 1000):
            runs = [cpu_per_job(batch_over(servers, routing, jobs)) for _ in range(repeats)]
            routing_rows.append(
                {"routing": routing, "servers": servers, "us": min(runs), "runs": runs}
            )
    one_server = {r["routing"]: r["us"] for r in routing_rows if r["servers"] == 1}
    print(
        table(
            ["routing", "servers", "µs/job", "vs 1 server"],
            [
                [
                    r["routing"],
                    r["servers"],
                    f"{r['us']:.1f}",
                    f"{r['us'] / one_server[r['routing']]:.2f}x",
                ]
                for r in routing_rows
            ],
        )
    )
    write_result(
        "admission",
        {"capacity": capacity, "callers": callers_rows, "routing": routing_rows, "jobs": jobs},
    )


if __name__ == "__main__":
    main()
